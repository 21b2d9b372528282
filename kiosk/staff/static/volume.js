// The Volume page: the number beside the volume slider follows it as it moves (the page shows the saved value
// without script).

function showValue(event) {
  const el = event.target;
  if (el.type !== "range" || !el.id) return;
  document.querySelectorAll(`output[for~="${CSS.escape(el.id)}"]`).forEach((out) => { out.textContent = el.value; });
}

document.addEventListener("input", showValue);
document.addEventListener("change", showValue);
