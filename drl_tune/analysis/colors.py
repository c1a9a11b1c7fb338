"""One fixed colour per registered method, so every figure (and every study) agrees; a module of its own so that
every figure module can use it without importing the others."""

from __future__ import annotations

# matplotlib's tab10, then the dark shades of tab20b for the second wave of comparators, then light tab20b shades
# and one Dark2 teal for the third (a demo_compare report showed arl/cml/remix and amco/mbsd/mmcosine in one colour
# while they fell back on EXTRA_COLORS): 21 colours, each method its own
METHOD_COLORS = {"joint": "#7f7f7f", "drl": "#d62728", "ogm_ge": "#1f77b4", "opm": "#2ca02c", "mmpareto": "#9467bd",
                 "inforeg": "#ff7f0e", "valuation": "#8c564b", "mmcosine": "#17becf", "cml": "#bcbd22",
                 "pmr": "#e377c2", "agm": "#393b79", "mla": "#8c6d31", "reconboost": "#637939", "umt": "#843c39",
                 "gblending": "#7b4173", "remix": "#e7ba52", "lfm": "#9c9ede", "greedy": "#ad494a",
                 "amco": "#8ca252", "mbsd": "#de9ed6", "arl": "#1b9e77"}
EXTRA_COLORS = ["#17becf", "#bcbd22", "#e377c2", "#000000"]
# more methods than this in one figure: legends go beside or below the axes, one entry per method
MANY_METHODS = 4


def method_color(method: str, methods: list[str] | None = None) -> str:
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    others = sorted(m for m in (methods or [method]) if m not in METHOD_COLORS)
    return EXTRA_COLORS[others.index(method) % len(EXTRA_COLORS)] if method in others else EXTRA_COLORS[0]
