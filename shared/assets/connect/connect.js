// Latchkey connect page: the only script the page runs (CSP script-src 'self', no inline code).
// 1. After a connection succeeds (body[data-connected]), tell the window that opened or frames
//    the page, at the session's parent origin only (nothing is posted when it has none).
// 2. In a frame, the OAuth Connect forms open in a new window: providers refuse to be framed.
(function () {
  "use strict";
  var body = document.body;
  var origin = body.getAttribute("data-parent-origin") || "";
  var connected = body.getAttribute("data-connected") || "";
  var framed = window.parent && window.parent !== window;

  if (connected && origin) {
    var message = { type: "latchkey:connected", connection_id: connected };
    if (window.opener && !window.opener.closed) {
      try { window.opener.postMessage(message, origin); } catch (e) { /* the opener moved on */ }
    }
    if (framed) {
      try { window.parent.postMessage(message, origin); } catch (e) { /* not our parent's origin */ }
    }
  }

  if (framed) {
    var forms = document.querySelectorAll("form.authorize-form");
    for (var i = 0; i < forms.length; i++) {
      forms[i].setAttribute("target", "_blank");
      var note = forms[i].querySelector(".new-window-note");
      if (note) { note.hidden = false; }
    }
  }

  // A button that was pressed says so, and is not pressed twice while the next page loads.
  var all = document.querySelectorAll("form");
  for (var j = 0; j < all.length; j++) {
    all[j].addEventListener("submit", function (event) {
      var form = event.currentTarget;
      if (form.getAttribute("target") === "_blank") { return; }
      var buttons = form.querySelectorAll("button[type=submit]");
      for (var k = 0; k < buttons.length; k++) {
        buttons[k].setAttribute("aria-disabled", "true");
        buttons[k].classList.add("busy");
      }
      if (form.getAttribute("data-submitted") === "true") { event.preventDefault(); }
      form.setAttribute("data-submitted", "true");
    });
  }
})();
