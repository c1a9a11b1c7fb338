"""The methods page's reference section (docs/methods.md): every registered method's rule and departures from
its authors' code, as its module docstring states them — written once, in the method's file.

    python -m drl_tune.methods.docs_reference      # the section to paste between the markers of docs/methods.md
"""

from __future__ import annotations

import inspect
import sys

from drl_tune.methods import REGISTRY

START = "<!-- methods reference: python -m drl_tune.methods.docs_reference -->"
END = "<!-- end of methods reference -->"


def markdown() -> str:
    parts = [START, ""]
    for name, method in REGISTRY.items():
        doc = inspect.getdoc(sys.modules[method.__module__]) or ""
        parts += [f"### `{name}`", "", doc.strip(), ""]
    parts.append(END)
    return "\n".join(parts)


if __name__ == "__main__":
    print(markdown())
