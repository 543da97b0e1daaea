// Communs: small progressive enhancements (the pages work without this file).
document.addEventListener("htmx:xhr:progress", (event) => {
  const form = event.target.closest("form");
  const bar = form && form.querySelector("progress");
  if (bar && event.detail.lengthComputable) {
    bar.hidden = false;
    bar.value = Math.round((event.detail.loaded / event.detail.total) * 100);
  }
});
document.addEventListener("htmx:afterRequest", (event) => {
  const form = event.target.closest("form");
  const bar = form && form.querySelector("progress");
  if (bar) bar.hidden = true;
});
document.addEventListener("change", (event) => {
  const select = event.target.closest("select[data-fills]");
  if (!select) return;
  const option = select.selectedOptions[0];
  const target = document.getElementById(select.dataset.fills);
  if (target && option && option.dataset.text) target.value = option.dataset.text;
});
