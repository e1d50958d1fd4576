// Progressive enhancement only: every page works without JavaScript.
// Buttons and forms with data-confirm ask first (the server also asks when JS is off).
document.addEventListener("submit", (event) => {
  const form = event.target;
  const submitter = event.submitter;
  const message = (submitter && submitter.dataset.confirm) || form.dataset.confirm;
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});

// With JS the panic button's confirm dialog (data-confirm) has already asked, so its form may
// carry confirm=yes; without JS that field stays disabled and /panic asks on a page of its own.
document.querySelectorAll("input.js-only-confirm").forEach((input) => {
  input.disabled = false;
});

// A freshly made API token is shown once: selecting it on focus makes copying it one tap.
document.querySelectorAll("input[data-select-on-focus]").forEach((input) => {
  input.addEventListener("focus", () => input.select());
});
