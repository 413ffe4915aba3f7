"""Plan search: explore serving modes (disagg, agg), parallel layouts (attention TP, moe_tp x ep, pp, instances),
prefill/decode splits and instance sizes, batch, microbatching, MTP and precision within a device budget; the
analytic twin for every candidate, the simulator for the best few.

Public API: `search(spec, *, workers=None, progress=None) -> SearchResult` (cmtwin/search/run.py),
`pareto(points)`.
"""

from cmtwin.search.run import Candidate, SearchResult, pareto, search

__all__ = ["Candidate", "SearchResult", "pareto", "search"]
