"""The kit of report.html's pages: the style, the scripts that sort and filter tables, sortable tables,
plotly figures as <div>s, and the page around them (plotly.js embedded once, so the page works offline)."""

from __future__ import annotations

import html

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1280px;padding:0 24px 48px;color:#222}
h1{margin:24px 0 4px}h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555}.banner{background:#fff4d6;border:1px solid #e6c35c;padding:8px 12px;border-radius:4px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}th,td{border:1px solid #ddd;padding:3px 6px;text-align:right}
th{background:#f3f3f3;cursor:pointer;position:sticky;top:0;user-select:none}th:after{content:' \\2195';color:#aaa}
td.t,th.t{text-align:left}table.nowrap1 td:first-child{white-space:nowrap}tr:hover td{background:#f6f9ff}.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}
.supported{color:#1a7f37;font-weight:600}.contradicted{color:#c62828;font-weight:600}.inconclusive{color:#777}
input.filter{margin:6px 0;padding:3px 6px;width:280px}pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px}
.scroll{max-height:520px;overflow:auto}footer{margin-top:40px;color:#555;font-size:12px}
"""

SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
      rows.sort(function(a, b){
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        var nx = parseFloat(x), ny = parseFloat(y);
        if (x === '' || y === '') return (x === '') - (y === '');
        if (!isNaN(nx) && !isNaN(ny)) return dir * (nx - ny);
        return dir * x.localeCompare(y);
      });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
document.querySelectorAll('input.filter').forEach(function(input){
  input.addEventListener('input', function(){
    var needle = input.value.toLowerCase(), table = document.getElementById(input.dataset.table);
    Array.from(table.tBodies[0].rows).forEach(function(r){
      r.style.display = r.textContent.toLowerCase().indexOf(needle) >= 0 ? '' : 'none';
    });
  });
});
"""


def esc(value) -> str:
    """Text made safe inside HTML."""
    return html.escape(str(value))


def num(value, digits: int = 4) -> str:
    """A table cell's number for people: '–' for none, thousands separated, 4 decimals or 3 significant."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if value and abs(value) < 0.01 else f"{value:.{digits}f}"
    return esc(value)


def table(
    table_id: str, header: list[str], rows: list[list], text_cols: int = 1, swatches: list | None = None
) -> str:
    """A sortable, filterable table: cells keep their raw value in data-v for sorting."""
    head = "".join(f'<th class="{"t" if i < text_cols else ""}">{esc(h)}</th>' for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cells = []
        for i, value in enumerate(row):
            raw = "" if value is None else value
            shown = num(value) if i >= text_cols else esc(value if value is not None else "–")
            if i == 0 and swatches:
                shown = f'<span class="sw" style="background:{swatches[r]}"></span>' + shown
            if isinstance(value, str) and value in ("supported", "contradicted", "inconclusive"):
                shown = f'<span class="{value}">{shown}</span>'
            text = i < text_cols or isinstance(value, str)
            cells.append(f'<td class="{"t" if text else ""}" data-v="{esc(raw)}">{shown}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<input class="filter" data-table="{table_id}" placeholder="filter rows…">'
        f'<div class="scroll"><table class="sortable{" nowrap1" if swatches else ""}" id="{table_id}">'
        f"<thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def figure_html(fig, div_id: str) -> str:
    """A plotly figure as a <div>, the library left to the page (embedded once)."""
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False})


def page(title: str, body: list[str]) -> str:
    """The whole self-contained page: style, plotly.js embedded, the body, the table scripts."""
    from plotly.offline import get_plotlyjs  # heavy (about 1 s): only a report page needs plotly

    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{STYLE}</style><script>{get_plotlyjs()}</script></head><body>"
        + "\n".join(body)
        + f"<script>{SCRIPT}</script></body></html>"
    )
