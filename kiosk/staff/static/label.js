// The Captions label page: the Print button prints the label (the page's print CSS leaves only the label on the
// paper). Without script the button stays hidden and the browser's own Print does the same.

const button = document.getElementById("print-label");
if (button) {
  button.hidden = false;
  button.addEventListener("click", () => window.print());
}
