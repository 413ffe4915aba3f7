"""`cmtwin import launch`: launch commands of SGLang, vLLM, TensorRT-LLM or vLLM-Ascend (scripts, a directory of
them as `cmtwin export launch` writes, or a command line) read back into a deployment under
./cmtwin_conf/deployment/, so what runs today can be planned, predicted and searched around.

Each engine module reads its own flags (unknown ones are listed, never dropped silently); the processes of one
instance beyond its first node are recognised and skipped; instances of a role are counted. What flags cannot say
(hardware, topology, workload...) comes from the `# cmtwin-context:` line of exported scripts, else from
--hardware / --nodes / --workload.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cmtwin.errors import ConfigError
from cmtwin.launch import context as ctx
from cmtwin.launch.bundle import read_launches
from cmtwin.launch.engine import engine_module

TOPOLOGY_OF = {"h100_sxm": "h100_cluster", "h200_sxm": "h200_cluster", "h800_sxm": "h800_cluster",
               "ascend_910c": "cloudmatrix384"}


def detect(argv: list[str], hint: str | None = None) -> str | None:
    """Which engine a command starts (None: not an engine process, e.g. `ray start` or a router)."""
    if "sglang.launch_server" in argv:
        return "sglang"
    if "trtllm-serve" in argv and "disaggregated" not in argv:
        return "trtllm"
    if argv[:2] == ["vllm", "serve"]:
        return "vllm-ascend" if hint == "vllm-ascend" or "--additional-config" in argv else "vllm"
    return None


def model_for_path(path: str):
    """The model config whose hf_id is `path` (None if no shipped or user model has it)."""
    from cmtwin.config.compose import load_group_option, options

    for name in options("model"):
        m = load_group_option("model", name)
        if m.get("hf_id") == path or name == path:
            from cmtwin.model.arch import ModelSpec

            return ModelSpec.model_validate(m)
    return None


@dataclass
class Imported:
    deployment: dict
    name: str
    engine: str
    unknown: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _sources(items: list[str]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """[(label, text)] of the scripts or command lines, and {file name: text} of every file given (for the
    configs the commands name)."""
    texts, files = [], {}
    for item in items:
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.iterdir()):
                if f.is_file():
                    files[f.name] = f.read_text()
                    if f.suffix == ".sh":
                        texts.append((str(f), files[f.name]))
        elif p.is_file():
            files[p.name] = p.read_text()
            texts.append((str(p), files[p.name]))
        elif item.strip().startswith(("python", "vllm", "trtllm-serve", "mpirun")):
            texts.append(("command line", item))
        else:
            raise ConfigError(f"{item!r} is neither a file, a directory nor a launch command.", key="FILE_OR_COMMAND",
                              fix="give launch scripts, the directory `cmtwin export launch` wrote, or a quoted "
                                  "command such as 'python -m sglang.launch_server --model-path ... --tp-size 8'")
    return texts, files


def import_launch(items: list[str], *, engine: str | None = None, name: str | None = None,
                  hardware: str | None = None, nodes: int | None = None, workload: str | None = None) -> Imported:
    texts, files = _sources(items)
    context = next((c for _, t in texts if (c := ctx.find_context(t)) is not None), None)
    roles: dict[str, tuple] = {}  # role -> (Imported, instance indices)
    found_engine, unknown, skipped = None, [], []
    for label, text in texts:
        for fields, argv in read_launches(text):
            eng = detect(argv, engine)
            if eng is None:
                skipped.append(" ".join(argv[:3]))
                continue
            if engine and eng != engine and not (engine == "vllm-ascend" and eng == "vllm"):
                raise ConfigError(f"{label}: a {eng} command, but --engine {engine} was given.", key="--engine",
                                  fix=f"give --engine {eng}, or the {engine} commands")
            found_engine = found_engine or eng
            if _other_node(eng, argv, fields):
                continue
            mod = engine_module(eng)
            imp = mod.parse(argv, files) if eng == "trtllm" else mod.parse(argv)
            role = fields.get("role", imp.role)
            imp.role = role
            unknown += [u for u in imp.unknown if u not in unknown]
            prev = roles.get(role)
            instance = int(fields.get("instance", len(prev[1]) if prev else 0))
            if prev is None:
                roles[role] = (imp, {instance})
            else:
                prev[1].add(instance)
    if not roles:
        raise ConfigError("no SGLang, vLLM or TensorRT-LLM launch command found in " + ", ".join(items) + ".",
                          key="FILE_OR_COMMAND", fix="give the scripts that start the engine (python -m "
                          "sglang.launch_server, vllm serve, trtllm-serve)")
    dep = _deployment(roles, context, name=name, hardware=hardware, nodes=nodes, workload=workload)
    return Imported(dep, dep["deployment"]["name"], found_engine, unknown, skipped)


def _other_node(engine: str, argv: list[str], fields: dict) -> bool:
    """A process of an instance's node beyond the first (the layout is read from node 0)."""
    if fields.get("node", "0") != "0":
        return True
    if engine == "sglang" and "--node-rank" in argv:
        return argv[argv.index("--node-rank") + 1] != "0"
    return engine.startswith("vllm") and "--headless" in argv


def _deployment(roles: dict, context: dict | None, *, name, hardware, nodes, workload) -> dict:
    from cmtwin.config.compose import load_group_option

    first = next(iter(roles.values()))[0]
    model = model_for_path(first.model_path)
    if model is None:
        raise ConfigError(f"the model path {first.model_path!r} is not the hf_id of any model config.", key="model",
                          fix="add a model config with `hf_id: " + first.model_path + "` under cmtwin_conf/model/, "
                              "or launch with the Hugging Face id of a shipped one (cmtwin config options model)")
    if context is not None:
        groups, values = dict(context["groups"]), dict(context["values"])
    else:
        if hardware is None:
            raise ConfigError("the commands carry no cmtwin context, so the hardware they run on is unknown.",
                              key="--hardware", fix="give --hardware (e.g. h200_sxm), and --nodes if not one node")
        groups = {"hardware": hardware, "hardware@host": None, "topology": TOPOLOGY_OF.get(hardware),
                  "workload": workload or "chat_1k"}
        values = {"deployment": {"name": name or "imported", "description": "imported by cmtwin import launch"}}
    hw = load_group_option("hardware", groups["hardware"])
    dies = int(hw["dies_per_device"]["value"])
    precisions = {imp.precision for imp, _ in roles.values()}
    if len(precisions) > 1:
        raise ConfigError(f"the roles run different precisions ({', '.join(sorted(precisions))}).", key="precision",
                          fix="one precision for the whole deployment")
    sections: dict = {"precision": first.precision, "kv_cache_dtype": first.kv_cache_dtype,
                      "mtp": {**values.pop("mtp", {}), "draft_tokens": first.drafts}}
    agg = roles.get("agg")
    sections["serving"] = {"mode": "agg" if agg else "disagg", "concurrency": None,
                           "engine": (agg[0].engine_budget if agg and agg[0].engine_budget else "sglang"),
                           "max_batched_tokens": agg[0].budget if agg else None}
    pre = roles.get("prefill")
    if pre:
        p, inst = pre
        sections["prefill"] = {"instances": len(inst), "devices_per_instance": p.ranks // dies, "ep": p.ep,
                               "tp": p.tp, "tp_mode": "allreduce", "moe_tp": p.moe_tp, "pp": p.pp,
                               "redundant_experts": p.redundant, "dedicated_shared_ranks": 0,
                               "tokens_per_device": p.tokens_per_rank * dies, "microbatches": p.microbatches}
    else:
        sections["prefill"] = {"instances": 0}
    dec = roles.get("agg") or roles.get("decode")
    if dec:
        d, inst = dec
        sections["decode"] = {"devices": d.ranks // dies, "instances": len(inst), "ep": d.ep, "tp": d.tp,
                              "tp_mode": "allreduce", "moe_tp": d.moe_tp, "pp": d.pp, "redundant_experts": d.redundant,
                              "dedicated_shared_ranks": 0, "batch_per_group": d.batch_per_group,
                              "microbatches": d.microbatches}
    else:
        sections["decode"] = {"devices": 0}
    if context is None:
        used = sum(len(inst) * imp.ranks for imp, inst in roles.values()) // dies
        values["topology"] = {"params": {"nodes": nodes or max(1, math.ceil(used / 8))}}
    if name:
        values["deployment"] = {**values.get("deployment", {}), "name": name}
    defaults = [{f"override /{'hardware@host' if k == 'hardware@host' else k}": v} for k, v in
                (("hardware", groups["hardware"]), ("hardware@host", groups.get("hardware@host")),
                 ("topology", groups["topology"]), ("model", model.name), ("workload", groups["workload"]))]
    return {"defaults": defaults, **values, **sections}


def write_deployment(imp: Imported, folder: Path = Path("cmtwin_conf/deployment")) -> Path:
    path = folder / f"{imp.name}.yaml"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        head = (f"# @package _global_\n# Imported by `cmtwin import launch` from {imp.engine} launch commands.\n")
        if imp.unknown:
            head += "# Flags cmtwin does not know (not modelled): " + " ".join(imp.unknown) + "\n"
        path.write_text(head + yaml.safe_dump(imp.deployment, sort_keys=False, default_flow_style=False))
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror}).", key="--name",
                          fix="run it where ./cmtwin_conf/deployment/ can be written") from None
    return path
