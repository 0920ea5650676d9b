// Shared rendering helpers: every value from the API goes through esc() before it reaches innerHTML.
export const $ = (id) => document.getElementById(id);
export const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
  '"': "&quot;", "'": "&#39;" })[c]);
const q = () => $("search").value.trim().toLowerCase();
// The search box filters every page: a row stays when any of the given values (as JSON text) contains it.
export const match = (...vals) => !q() || vals.some((v) => JSON.stringify(v ?? "").toLowerCase().includes(q()));
const hashArgs = (args) => {
  const p = new URLSearchParams(Object.entries(args).filter(([, v]) => v));
  return p.toString() ? "?" + p : "";
};
export const dpLink = (m, n, label) => `<a href="#/dataplanes/${encodeURIComponent(m)}/${encodeURIComponent(n)}">`
  + `${esc(label || n)}</a>`;
export const dpsLink = (args, label) => `<a href="#/dataplanes${hashArgs(args)}">${esc(label)}</a>`;
// On a global every zone has a page; elsewhere the zone name is plain text.
export const zoneLink = (d, z) => !z ? "" : d.index.mode === "global"
  ? `<a href="#/zones/${encodeURIComponent(z)}">${esc(z)}</a>` : esc(z);
export const table = (head, rows) => `<table><thead><tr>${head.map((h) => `<th scope="col">${esc(h)}</th>`)
  .join("")}</tr></thead><tbody>${rows.join("") || `<tr><td colspan="${head.length}">Nothing here.</td></tr>`}`
  + "</tbody></table>";
export const tags = (t) => Object.entries(t || {}).map(([k, v]) => `<code>${esc(k)}=${esc(v)}</code>`).join(" ");
export const statusCell = (s) => `<td class="${esc(String(s).toLowerCase().split(" ")[0])}">${esc(s)}</td>`;

// YAML as kumactl prints it (block style); strings are quoted (JSON style, valid YAML) when plain would be ambiguous.
export function yaml(v, indent = "") {
  const scalar = (x) => typeof x === "string" && /^[A-Za-z0-9_./-][A-Za-z0-9_./ :-]*$/.test(x) && !/: |:$/.test(x)
    && !/^(true|false|null|yes|no|~|[-+]?[0-9.]+)$/i.test(x) ? x : JSON.stringify(x);
  if (Array.isArray(v)) return v.length ? v.map((x) => `${indent}- ` + (x && typeof x === "object"
    ? yaml(x, indent + "  ").trimStart() : scalar(x))).join("\n") : indent + "[]";
  if (v && typeof v === "object") return Object.keys(v).length ? Object.entries(v).map(([k, x]) =>
    x && typeof x === "object" && Object.keys(x).length ? `${indent}${scalar(k)}:\n${yaml(x, indent + "  ")}`
      : `${indent}${scalar(k)}: ${x && typeof x === "object" ? (Array.isArray(x) ? "[]" : "{}") : scalar(x)}`)
    .join("\n") : indent + "{}";
  return indent + scalar(v);
}
