"""`cmtwin config show|validate|schema`: the composed config, its validation, the JSON schema."""

from __future__ import annotations

import argparse

from cmtwin.cli.common import add_overrides, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show, validate or describe the configuration")
    verbs = p.add_subparsers(dest="config_verb", metavar="show|validate|schema|groups")
    verbs.required = True
    show = verbs.add_parser("show", help="print the composed config (YAML) for the overrides")
    add_overrides(show)
    show.add_argument("--resolved", action="store_true", help="print the validated spec (defaults filled) as JSON")
    show.set_defaults(func=_show)
    val = verbs.add_parser("validate", help="compose and validate; exit 2 with the reason if invalid")
    add_overrides(val)
    val.add_argument("--plan", action="store_true", help="also compile the plan (memory and placement checks)")
    val.set_defaults(func=_validate)
    sch = verbs.add_parser("schema", help="print the JSON schema of the validated spec")
    sch.set_defaults(func=_schema)
    grp = verbs.add_parser("groups", help="list config groups, policy families and their options")
    grp.set_defaults(func=_groups)


def _show(args) -> int:
    from cmtwin.config.compose import compose, load_spec

    if args.resolved:
        spec, _ = load_spec(args.overrides, require_deployment=False)
        print_json(spec.model_dump(mode="json"))
        return 0
    import yaml

    composed = compose(args.overrides)
    print(f"# choices: {', '.join(f'{k}={v}' for k, v in composed.choices.items())}")
    print(yaml.safe_dump(composed.config, sort_keys=False, allow_unicode=True), end="")
    return 0


def _validate(args) -> int:
    from cmtwin.config.compose import load_spec
    from cmtwin.config.identity import spec_hash

    spec, _ = load_spec(args.overrides, require_deployment=False)
    msg = f"valid: {spec.deployment.name or '(no deployment)'} · spec hash {spec_hash(spec)}"
    if args.plan:
        from cmtwin.planner.plan import compile_plan

        plan = compile_plan(spec)
        msg += f" · plan compiles ({plan.devices_used} of {plan.devices_total} devices)"
    print(msg)
    return 0


def _schema(args) -> int:
    from cmtwin.config.schema import Spec

    from cmtwin.config.fielddocs import schema_with_docs

    print_json(schema_with_docs(Spec))
    return 0


def _groups(args) -> int:
    from cmtwin.config.compose import default_groups, groups, options, policy_families

    listed = groups() + policy_families()
    for g in listed:
        print(f"{g}: {', '.join(options(g))}")
    picked = set(default_groups())
    plus = [f"+{g}={options(g)[0]}" for g in listed if g not in picked and options(g)]
    print()
    print("Change a group the defaults select with group=NAME (e.g. hardware=h800_sxm). The others are not in the "
          "defaults (conf/config.yaml), so they are added with a plus: " + ", ".join(plus) + ".")
    return 0
