// The Schedule page: under each line menu, the whole of the chosen line (the menu shows it shortened). Without
// script the page shows the saved line there.

function showLine(select) {
  const says = document.getElementById(select.dataset.says || "");
  if (!says) return;
  const option = select.selectedOptions[0];
  const text = option && option.value ? option.dataset.text || "" : "";
  says.textContent = text ? `“${text}”` : "";
  says.hidden = !text;
}

document.addEventListener("change", (event) => {
  if (event.target.matches && event.target.matches("select[data-says]")) showLine(event.target);
});
// What staff typed, put back after a save (forms.js), may have another line chosen than the page was sent with.
document.addEventListener("kiosk:filled", (event) => {
  event.target.querySelectorAll("select[data-says]").forEach(showLine);
});
