// The Voice page: each "Hear this voice" button plays the voice chosen beside it (the click itself is handled by
// the listening code in app.js, which reads data-listen when pressed).
"use strict";

document.querySelectorAll("[data-sample-for]").forEach((button) => {
  const select = document.getElementById(button.dataset.sampleFor);
  if (!select) return;
  select.addEventListener("change", () => {
    const query = new URLSearchParams({ engine: button.dataset.sample, voice: select.value });
    button.dataset.listen = `/voice/sample.wav?${query}`;
  });
});
