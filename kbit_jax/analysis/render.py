"""Report blocks to Markdown and HTML, and the number formats the blocks are written in.

A block is a tuple:
  ("h", level, text) | ("p", text) | ("ul", items) | ("table", header, rows) | ("img", src, alt)
Text may hold `code` and [label](href), which the HTML page turns into tags; the HTML
page links the figures' PNGs next to it.
"""

from __future__ import annotations

import html
import math
import re
from typing import Any, Sequence

import numpy as np

Block = tuple  # see the module docstring


def num(v: Any, digits: int = 3) -> str:
  """3 significant digits; scientific outside [1e-3, 1e5); '-' for missing."""
  if v is None or (isinstance(v, float) and not math.isfinite(v)):
    return "-"
  if isinstance(v, (int, np.integer)):
    return f"{int(v):,}"
  v = float(v)
  if v != 0 and not 1e-3 <= abs(v) < 1e5:
    return f"{v:.{digits - 1}e}"
  return f"{v:.{digits}g}"


def with_ci(value: float, ci: tuple[float, float] | None) -> str:
  return num(value) + (f" [{num(ci[0])}, {num(ci[1])}]" if ci else "")


def percent(v: Any) -> str:
  return "-" if v is None or not np.isfinite(v) else f"{v:.0%}"


def cell_text(v: Any) -> str:
  if isinstance(v, (list, tuple)):
    return ", ".join(cell_text(x) for x in v)
  return num(v) if isinstance(v, (int, float, np.integer, np.floating)) else str(v)


def frame_table(table, digits: int = 3) -> Block:
  """A DataFrame (MultiIndex rows) as a table block."""
  names = [str(n) for n in table.index.names]
  header = tuple(names + [str(c) for c in table.columns])
  rows = [
    tuple(cell_text(v) for v in (i if isinstance(i, tuple) else (i,)))
    + tuple(num(v, digits) for v in r)
    for i, r in zip(table.index, table.to_numpy())
  ]
  return ("table", header, rows)


def _md_cell(text: str) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block]) -> str:
  out = []
  for b in blocks:
    if b[0] == "h":
      out.append("#" * b[1] + " " + b[2])
    elif b[0] == "p":
      out.append(b[1])
    elif b[0] == "ul":
      out.append("\n".join(f"- {item}" for item in b[1]))
    elif b[0] == "table":
      header, rows = b[1], b[2]
      lines = [
        "| " + " | ".join(map(_md_cell, header)) + " |",
        "|" + "|".join("---" for _ in header) + "|",
      ]
      lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
      out.append("\n".join(lines))
    elif b[0] == "img":
      out.append(f"![{b[2]}]({b[1]})")
  return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
  """Escapes text; `code` and [label](href) become tags."""
  text = html.escape(str(text))
  text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
  return re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', text)


CSS = (
  "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
  "color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}"
  "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}"
  "img{max-width:100%;border:1px solid #eee}code{background:#f5f5f5;padding:0 3px}"
)


def to_html(blocks: Sequence[Block]) -> str:
  out = [
    "<!DOCTYPE html>",
    "<html><head><meta charset='utf-8'>",
    "<title>k-bit inference scaling report</title>",
    f"<style>{CSS}</style></head><body>",
  ]
  for b in blocks:
    if b[0] == "h":
      out.append(f"<h{b[1]}>{_inline(b[2])}</h{b[1]}>")
    elif b[0] == "p":
      out.append(f"<p>{_inline(b[1])}</p>")
    elif b[0] == "ul":
      out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
    elif b[0] == "table":
      head = "".join(f"<th>{_inline(h)}</th>" for h in b[1])
      body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in b[2])
      out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    elif b[0] == "img":
      out.append(f"<p><img src='{html.escape(b[1])}' alt='{html.escape(b[2])}'></p>")
  return "\n".join(out + ["</body></html>"]) + "\n"
