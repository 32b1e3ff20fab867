// Line charts drawn as inline SVG: no library, nothing fetched. Each series is {name, points:
// [[x, y], ...]}; the chart is redrawn whole on each update (a few hundred points at most).

const NS = "http://www.w3.org/2000/svg";
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];
const W = 520, H = 230, PAD = { left: 56, right: 14, top: 10, bottom: 40 };

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function extent(values) {
  let lo = Math.min(...values), hi = Math.max(...values);
  if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 1; hi += Math.abs(hi) * 0.1 || 1; }
  return [lo, hi];
}

function label(v) {
  if (Number.isInteger(v) || Math.abs(v) >= 1000) return String(Math.round(v));
  if (v !== 0 && Math.abs(v) < 0.01) return v.toExponential(1);
  return String(Number(v.toPrecision(3)));
}

/** Draw `series` into `container` (its previous chart replaced); `empty` when there is no point. */
export function lineChart(container, series, { xLabel = "step", empty = "No points yet." } = {}) {
  const drawn = series.filter((s) => s.points.length);
  container.replaceChildren();
  if (!drawn.length) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = empty;
    container.append(p);
    return;
  }
  const xs = drawn.flatMap((s) => s.points.map((p) => p[0]));
  const ys = drawn.flatMap((s) => s.points.map((p) => p[1]));
  const [x0, x1] = extent(xs), [y0, y1] = extent(ys);
  const sx = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
  const sy = (y) => H - PAD.bottom - ((y - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "plot" });
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    svg.append(el("line", { x1: PAD.left, x2: W - PAD.right, y1: sy(y), y2: sy(y), class: "grid" }));
    svg.append(el("text", { x: PAD.left - 6, y: sy(y) + 4, "text-anchor": "end", class: "tick" }, label(y)));
  }
  for (const x of [x0, (x0 + x1) / 2, x1]) {
    svg.append(el("text", { x: sx(x), y: H - PAD.bottom + 16, "text-anchor": "middle", class: "tick" }, label(x)));
  }
  svg.append(el("text", { x: (PAD.left + W - PAD.right) / 2, y: H - 4, "text-anchor": "middle", class: "axis" }, xLabel));
  drawn.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const points = [...s.points].sort((a, b) => a[0] - b[0]);
    svg.append(el("polyline", { points: points.map(([x, y]) => `${sx(x)},${sy(y)}`).join(" "),
                                fill: "none", stroke: color, "stroke-width": 2, "data-series": s.name }));
    if (points.length < 40) {
      for (const [x, y] of points) svg.append(el("circle", { cx: sx(x), cy: sy(y), r: 2.5, fill: color }));
    }
  });
  const legend = document.createElement("div");
  legend.className = "legend";
  drawn.forEach((s, i) => {
    const item = document.createElement("span");
    item.style.setProperty("--c", COLORS[i % COLORS.length]);
    const last = s.points[s.points.length - 1][1];
    item.textContent = `${s.name}: ${label(last)}`;
    legend.append(item);
  });
  container.append(svg, legend);
}
