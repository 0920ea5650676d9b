// kuma-vm GUI: reads the public API (the endpoints kumactl uses) and renders escaped strings.
// Data layer: one list request per resource kind per refresh, never one request per dataplane.
// Hook for multi-zone: add "zones" and "zone-insights" to ZONE_KINDS once the API serves them.
const REFRESH_MS = 5000;
const ZONE_KINDS = []; // e.g. ["zones", "zone-insights"]: each becomes state.data[kind] and can get a page
const $ = (id) => document.getElementById(id);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
  '"': "&quot;", "'": "&#39;" })[c]);
const state = { data: null, error: null };

class ApiError extends Error { constructor(status, msg) { super(msg); this.status = status; } }

async function api(path) {
  const token = sessionStorage.getItem("kuma-token");
  let res;
  try {
    res = await fetch(path, { headers: token ? { Authorization: "Bearer " + token } : {} });
  } catch (e) { throw new ApiError(0, "the control plane does not answer (" + e.message + ")"); }
  if (!res.ok) {
    let detail = res.statusText;
    try { const b = await res.json(); detail = b.details || b.title || detail; } catch (_) { /* not JSON */ }
    throw new ApiError(res.status, detail);
  }
  return res.json();
}

async function listAll(path) {
  const items = [];
  let url = path + (path.includes("?") ? "&" : "?") + "size=1000";
  while (url) { const page = await api(url); items.push(...page.items); url = page.next; }
  return items;
}

async function load() {
  const [index, meshes, doc] = await Promise.all([api("/"), listAll("/meshes"), api("/openapi.json")]);
  // Policy kinds come from the API's own description: mesh-scoped types named mesh* (MeshTrafficPermission...).
  const kinds = Object.keys(doc.paths || {}).map((p) => p.match(/^\/meshes\/\{mesh\}\/(mesh[a-z]+)$/))
    .filter(Boolean).map((m) => m[1]);
  const perMesh = await Promise.all(meshes.map(async (m) => {
    const base = "/meshes/" + encodeURIComponent(m.name);
    const [overview, insights, ...pols] = await Promise.all([
      listAll(base + "/dataplanes/_overview"), listAll(base + "/dataplane-insights"),
      ...kinds.map((k) => listAll(base + "/" + k).catch(() => []))]);
    return { mesh: m, overview, insights, policies: pols.flat().map((p) => ({ ...p, mesh: p.mesh || m.name })) };
  }));
  const ingresses = await listAll("/zone-ingresses").catch(() => []);
  const zones = {};
  for (const k of ZONE_KINDS) zones[k] = await listAll("/" + k);
  const insightByKey = new Map();
  const dataplanes = [];
  for (const m of perMesh) {
    for (const i of m.insights) insightByKey.set(m.mesh.name + "/" + i.name, i);
    for (const o of m.overview) {
      const dp = o.dataplane, net = dp.networking || {};
      const inbound = net.inbound || [];
      const unhealthy = inbound.filter((i) => i.health && i.health.ready === false).length;
      const status = o.status === "offline" ? "offline" : unhealthy ? "partially healthy" : "online";
      dataplanes.push({ mesh: o.mesh, name: o.name, dp, status, inbound, outbound: net.outbound || [],
        insight: insightByKey.get(o.mesh + "/" + o.name),
        services: [...new Set(inbound.map((i) => (i.tags || {})["kuma.io/service"]).filter(Boolean))] });
    }
  }
  return { index, meshes: perMesh.map((m) => m.mesh), policies: perMesh.flatMap((m) => m.policies), dataplanes,
    ingresses, zones };
}

function services(d) {
  const by = new Map();
  for (const dp of d.dataplanes) for (const s of dp.services) {
    const key = dp.mesh + "/" + s;
    const e = by.get(key) || { mesh: dp.mesh, name: s, total: 0, online: 0 };
    e.total++; if (dp.status === "online") e.online++;
    by.set(key, e);
  }
  return [...by.values()];
}

const q = () => $("search").value.trim().toLowerCase();
const match = (...vals) => !q() || vals.some((v) => JSON.stringify(v ?? "").toLowerCase().includes(q()));
const dpLink = (m, n) => `<a href="#/dataplanes/${encodeURIComponent(m)}/${encodeURIComponent(n)}">${esc(n)}</a>`;
const table = (head, rows) => `<table><thead><tr>${head.map((h) => `<th scope="col">${esc(h)}</th>`).join("")}`
  + `</tr></thead><tbody>${rows.join("") || `<tr><td colspan="${head.length}">Nothing here.</td></tr>`}</tbody></table>`;
const tags = (t) => Object.entries(t || {}).map(([k, v]) => `<code>${esc(k)}=${esc(v)}</code>`).join(" ");

// YAML as kumactl prints it (block style); strings are quoted (JSON style, valid YAML) when plain would be ambiguous.
function yaml(v, indent = "") {
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

// The dataplanes a policy's top-level targetRef selects (null when its kind is not one evaluated here).
function selected(d, p) {
  const ref = (p.spec || p).targetRef || { kind: "Mesh" };
  const inMesh = d.dataplanes.filter((x) => x.mesh === p.mesh);
  if (ref.kind === "Mesh") return inMesh;
  if (ref.kind === "MeshService") return inMesh.filter((x) => x.services.includes(ref.name));
  if (ref.kind === "MeshSubset") return inMesh.filter((x) => x.inbound.some((i) =>
    Object.entries(ref.tags || {}).every(([k, v]) => (i.tags || {})[k] === v)));
  return null;
}

const pages = {
  overview(d) {
    const c = (s) => d.dataplanes.filter((x) => x.status === s).length;
    // Until multi-zone lands `GET /` names no zone: a zone-mode control plane alone is "standalone".
    const zone = d.index.mode === "global" ? "global" : d.index.zone || "standalone";
    const card = (label, n, cls = "") => `<div class="card"><div class="n ${cls}" data-count="${esc(label)}">`
      + `${esc(n)}</div>${esc(label)}</div>`;
    return `<h2>Overview</h2><p>Control plane version ${esc(d.index.version)}, mode ${esc(d.index.mode)}.</p>
      <section aria-labelledby="zh"><h3 id="zh">Zones</h3><p id="zone">${esc(zone)}</p></section>
      <div class="cards">${card("meshes", d.meshes.length)}${card("services", services(d).length)}
      ${card("dataplanes", d.dataplanes.length)}${card("online", c("online"), "online")}
      ${card("offline", c("offline"), "offline")}${card("partially healthy", c("partially healthy"), "partial")}
      </div>`;
  },
  meshes(d) {
    return "<h2>Meshes</h2>" + table(["Mesh", "mTLS", "Enabled backend", "Dataplanes"], d.meshes.filter((m) =>
      match(m.name)).map((m) => {
      const mtls = m.mtls;
      return `<tr><td>${esc(m.name)}</td><td>${mtls && mtls.enabledBackend ? "on" : "off"}</td>`
        + `<td>${esc(mtls && mtls.enabledBackend)}</td><td><a href="#/dataplanes?mesh=${encodeURIComponent(m.name)}">`
        + `${d.dataplanes.filter((x) => x.mesh === m.name).length}</a></td></tr>`;
    }));
  },
  services(d) {
    return "<h2>Services</h2>" + table(["Service", "Mesh", "Instances", "Online"], services(d).filter((s) =>
      match(s.name, s.mesh)).map((s) => `<tr><td><a href="#/dataplanes?service=${encodeURIComponent(s.name)}`
      + `&mesh=${encodeURIComponent(s.mesh)}">${esc(s.name)}</a></td><td>${esc(s.mesh)}</td><td>${s.total}</td>`
      + `<td class="${s.online === s.total ? "online" : "offline"}">${s.online}/${s.total}</td></tr>`));
  },
  dataplanes(d, params) {
    const f = { mesh: params.get("mesh") || "", service: params.get("service") || "", status: params.get("status") || "" };
    const rows = d.dataplanes.filter((x) => (!f.mesh || x.mesh === f.mesh) && (!f.service || x.services.includes(f.service))
      && (!f.status || x.status === f.status) && match(x.name, x.dp));
    const opt = (vals, cur) => ["", ...vals].map((v) => `<option value="${esc(v)}"${v === cur ? " selected" : ""}>`
      + `${esc(v || "any")}</option>`).join("");
    return `<h2>Dataplanes</h2><form class="filters" id="dpfilter">
      <label>Mesh <select name="mesh">${opt(d.meshes.map((m) => m.name), f.mesh)}</select></label>
      <label>Service <select name="service">${opt(services(d).map((s) => s.name), f.service)}</select></label>
      <label>Status <select name="status">${opt(["online", "offline", "partially healthy"], f.status)}</select></label>
      </form><p id="dpcount">${rows.length} dataplanes</p>` + table(["Name", "Mesh", "Status", "Tags"], rows.map((x) =>
      `<tr><td>${dpLink(x.mesh, x.name)}</td><td>${esc(x.mesh)}</td><td class="${x.status.split(" ")[0]}">`
      + `${esc(x.status)}</td><td>${x.inbound.map((i) => tags(i.tags)).join("<br>")}</td></tr>`));
  },
  policies(d) {
    const list = d.policies.filter((p) => match(p)).map((p) => {
      const sel = selected(d, p);
      return `<section><h3>${esc(p.type)} ${esc(p.name)} <small>(mesh ${esc(p.mesh)})</small></h3>`
        + `<p>Selects ${sel === null ? "dataplanes by a rule the GUI does not evaluate" : sel.length + " dataplanes: "
        + sel.map((x) => dpLink(x.mesh, x.name)).join(", ")}</p><pre>${esc(yaml(p))}</pre></section>`;
    });
    return "<h2>Policies</h2>" + (list.join("") || "<p>No policies.</p>");
  },
  "zone-ingresses"(d) {
    return "<h2>Zone ingresses</h2>" + table(["Name", "Available services"], d.ingresses.filter((z) => match(z))
      .map((z) => `<tr><td>${esc(z.name)}</td><td>${((z.availableServices) || []).map((s) => tags(s.tags))
      .join("<br>")}</td></tr>`));
  },
};

async function dataplaneDetail(d, mesh, name) {
  const x = d.dataplanes.find((y) => y.mesh === mesh && y.name === name);
  if (!x) return `<h2>Dataplane ${esc(name)}</h2><p class="error">No dataplane ${esc(name)} in mesh ${esc(mesh)}.</p>`;
  const ins = x.insight || {}, subs = ins.subscriptions || [], last = subs[subs.length - 1] || {};
  const mtls = ins.mTLS || ins.mtls || {};
  let pol = "";
  try {
    const r = await api(`/meshes/${encodeURIComponent(mesh)}/dataplanes/${encodeURIComponent(name)}/policies`);
    const rows = (r.policyTypes || []).flatMap((t) => (t.policies || []).map((p) => `<tr><td>${esc(t.type)}</td>`
      + `<td>${esc(p.name)}</td><td>${esc(p.why)}</td><td>${esc(p.precedence)}</td></tr>`));
    pol = table(["Type", "Policy", "Why", "Precedence"], rows)
      + `<details><summary>Resolved configuration</summary><pre>${esc(JSON.stringify(r, null, 2))}</pre></details>`;
  } catch (e) { pol = `<p class="error">${esc(e.message)}</p>`; }
  return `<h2>Dataplane ${esc(name)}</h2><dl><dt>Mesh</dt><dd>${esc(mesh)}</dd><dt>Status</dt>
    <dd class="${x.status.split(" ")[0]}">${esc(x.status)}</dd>
    <dt>Certificate expiry</dt><dd>${esc(mtls.certificateExpirationTime || "none")}</dd>
    <dt>Last config push</dt><dd>${esc(last.status && last.status.lastUpdateTime || last.connectTime || "never")}</dd>
    <dt>ACK / NACK</dt><dd>${esc(last.status ? JSON.stringify(last.status.total || last.status) : "none")}</dd></dl>
    <h3>Inbound</h3>${table(["Port", "Tags"], x.inbound.map((i) => `<tr><td>${esc(i.port)}</td><td>${tags(i.tags)}</td></tr>`))}
    <h3>Outbound</h3>${table(["Port", "Tags"], x.outbound.map((o) => `<tr><td>${esc(o.port)}</td><td>${tags(o.tags)}</td></tr>`))}
    <h3>Policies that apply</h3>${pol}`;
}

async function render() {
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const page = parts[0] || "overview";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href") === "#/" + (page === "overview" ? "" : page)) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const main = $("main");
  if (state.error) {
    const e = state.error;
    const why = e.status === 401 ? "Not signed in or the token was refused (401): " : e.status === 403
      ? "Not allowed (403): " : e.status === 0 ? "Control plane unreachable: " : `Error ${e.status}: `;
    main.innerHTML = `<p class="error" id="error" data-status="${esc(e.status)}">${esc(why + e.message)}</p>`;
    $("login").hidden = e.status !== 401;
    return;
  }
  $("login").hidden = true;
  if (!state.data) { main.innerHTML = "<p>Loading...</p>"; return; }
  if (page === "dataplanes" && parts.length === 3) { main.innerHTML = await dataplaneDetail(state.data, parts[1], parts[2]); return; }
  const fn = pages[page];
  main.innerHTML = fn ? fn(state.data, new URLSearchParams(query || "")) : `<p class="error">No page ${esc(page)}.</p>`;
  const form = $("dpfilter");
  if (form) form.addEventListener("change", () => {
    const p = new URLSearchParams([...new FormData(form)].filter(([, v]) => v));
    location.hash = "#/dataplanes" + (p.toString() ? "?" + p : "");
  });
}

async function refresh() {
  try { state.data = await load(); state.error = null; $("status").textContent = "Updated " + new Date().toLocaleTimeString(); }
  catch (e) { state.error = e instanceof ApiError ? e : new ApiError(-1, e.message); }
  $("logout").hidden = !sessionStorage.getItem("kuma-token");
  // A refresh rebuilds <main>: keep keyboard focus on the same link or filter so auto-refresh never moves it.
  const el = document.activeElement;
  const key = el && el.closest("main") ? (el.getAttribute("href") ? `a[href="${CSS.escape(el.getAttribute("href"))}"]`
    : el.name ? `[name="${CSS.escape(el.name)}"]` : null) : null;
  await render();
  if (key) { const again = $("main").querySelector(key); if (again) again.focus(); }
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault(); sessionStorage.setItem("kuma-token", $("token").value.trim()); $("token").value = ""; refresh();
});
$("logout").addEventListener("click", () => { sessionStorage.removeItem("kuma-token"); refresh(); });
$("search").addEventListener("input", render);
window.addEventListener("hashchange", render);
refresh();
setInterval(refresh, REFRESH_MS);
