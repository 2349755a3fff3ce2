"use strict";
const ITEMS = JSON.parse(document.getElementById("items").textContent);
const PAGE = Number(document.getElementById("gallery").dataset.pageSize);
const grid = document.getElementById("gallery");
const pager = document.getElementById("pager");
let shown = ITEMS, page = 0, status = "all", query = "";
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function card(it) {
  const c = el("article", it.error ? "card failed" : "card");
  c.dataset.id = it.id;
  const imgs = el("div", "imgs");
  if (it.error) {
    imgs.append(el("div", "ph", it.error.type || "failed"));
  } else {
    imgs.style.setProperty("--cols", Math.ceil(Math.sqrt(it.images.length)) || 1);
    for (const im of it.images) {
      if (im.missing) { imgs.append(el("div", "ph", "missing: " + im.missing)); continue; }
      const a = el("a"); a.href = im.full;
      const img = el("img"); img.loading = "lazy"; img.decoding = "async";
      img.alt = it.prompt; img.src = im.thumb;
      a.append(img); imgs.append(a);
    }
  }
  const b = el("div", "body");
  const head = el("div", "small");
  head.append(el("span", "badge " + (it.error ? "failed" : "ok"), it.error ? "failed" : "done"),
              " line " + it.line + " \u00b7 " + it.seconds + " s" +
              (it.attempts != null ? " \u00b7 " + it.attempts + " attempt" +
               (it.attempts === 1 ? "" : "s") : "") +
              (it.rate_limited ? " \u00b7 " + it.rate_limited + " \u00d7 429" : ""));
  b.append(head);
  const p = el("div", "prompt", it.prompt); p.title = it.prompt; b.append(p);
  if (it.revised) b.append(el("div", "revised", "revised: " + it.revised));
  if (it.params) {
    const chips = el("div", "chips");
    for (const [k, v] of Object.entries(it.params)) chips.append(el("span", "chip", k + " " + v));
    b.append(chips);
  }
  if (it.error) {
    const e = it.error, box = el("div", "err");
    box.append(el("b", "", [e.type, e.code, e.status].filter(Boolean).join(" \u00b7 ")),
               e.message || "");
    if (e.param) box.append(el("div", "small", "param: " + e.param));
    b.append(box);
  }
  b.append(el("div", "small mono", it.id + (it.request_id ? " \u00b7 " + it.request_id : "")));
  c.append(imgs, b);
  return c;
}
function draw() {
  const pages = Math.max(1, Math.ceil(shown.length / PAGE));
  page = Math.min(page, pages - 1);
  const slice = shown.slice(page * PAGE, (page + 1) * PAGE);
  grid.replaceChildren(...slice.map(card));
  if (!slice.length) grid.append(el("div", "empty", "nothing matches"));
  pager.textContent = shown.length + " of " + ITEMS.length + " items \u00b7 page " +
    (page + 1) + " of " + pages;
  for (const nav of document.querySelectorAll("nav.pages")) {
    nav.querySelector(".prev").disabled = page === 0;
    nav.querySelector(".next").disabled = page >= pages - 1;
  }
  document.body.dataset.rendered = String(slice.length);
}
function apply() {
  const q = query.toLowerCase();
  shown = ITEMS.filter(it => (status === "all" || (status === "failed") === !!it.error) &&
    (!q || (it.prompt + " " + (it.revised || "") + " " + it.id + " " +
            (it.error ? it.error.message || "" : "")).toLowerCase().includes(q)));
  page = 0;
  draw();
}
for (const btn of document.querySelectorAll("[data-status]")) {
  btn.addEventListener("click", () => {
    status = btn.dataset.status;
    for (const other of document.querySelectorAll("[data-status]"))
      other.classList.toggle("on", other === btn);
    apply();
  });
}
document.getElementById("search").addEventListener("input", e => {
  query = e.target.value;
  apply();
});
function turn(by) {
  page += by;
  draw();
  scrollTo(0, grid.offsetTop - 60);
}
for (const nav of document.querySelectorAll("nav.pages")) {
  nav.querySelector(".prev").addEventListener("click", () => turn(-1));
  nav.querySelector(".next").addEventListener("click", () => turn(1));
}
draw();
performance.mark("asyncimg-rendered");
