// Latchkey connect page: the only script the page runs (CSP script-src 'self', no inline code).
// 1. After a connection succeeds (body[data-connected]), tell the window that opened or frames
//    the page, at the session's parent origin only (nothing is posted when it has none).
// 2. In a frame, the OAuth Connect forms open in a new window (providers refuse to be framed),
//    with an opener: when the authorization ends there, that window tells this page (same
//    origin only), which loads its success view and so tells its parent in turn.
// 3. The Connect button's answer is a page of this origin with a link to the provider
//    (a[data-continue]), so the page's CSP keeps form-action 'self': go there at once.
// 4. Buttons with data-confirm (Disconnect) ask before their form is posted.
(function () {
  "use strict";
  var next = document.querySelector("a[data-continue]");
  if (next) {
    window.location.replace(next.href);
    return;
  }
  var body = document.body;
  var session = body.getAttribute("data-session") || "";
  var origin = body.getAttribute("data-parent-origin") || "";
  var connected = body.getAttribute("data-connected") || "";
  var framed = window.parent && window.parent !== window;

  if (connected) {
    var message = { type: "latchkey:connected", connection_id: connected };
    var opener = window.opener;
    if (opener && !opener.closed) {
      if (origin) {
        try { opener.postMessage(message, origin); } catch (e) { /* the opener moved on */ }
      }
      // A connect page in a frame that opened this window.
      try { opener.postMessage(message, window.location.origin); } catch (e) { /* not ours */ }
    }
    if (framed && origin) {
      try { window.parent.postMessage(message, origin); } catch (e) { /* not our parent's origin */ }
    }
  }

  if (session) {
    window.addEventListener("message", function (event) {
      var data = event.data;
      if (event.origin !== window.location.origin || event.source === window || !data) { return; }
      if (data.type !== "latchkey:connected" || typeof data.connection_id !== "string") { return; }
      if (!/^[A-Za-z0-9_-]{1,64}$/.test(data.connection_id) || data.connection_id === connected) { return; }
      window.location.replace("/connect/" + encodeURIComponent(session) +
        "?connected=" + encodeURIComponent(data.connection_id));
    });
  }

  if (framed) {
    var forms = document.querySelectorAll("form.authorize-form");
    for (var i = 0; i < forms.length; i++) {
      forms[i].setAttribute("target", "_blank");
      forms[i].setAttribute("rel", "opener");
      var note = forms[i].querySelector(".new-window-note");
      if (note) { note.hidden = false; }
    }
  }

  // A button with data-confirm (Disconnect) asks first; cancelled, nothing is posted. Without
  // script the form posts at once.
  var confirming = document.querySelectorAll("button[data-confirm]");
  for (var c = 0; c < confirming.length; c++) {
    confirming[c].addEventListener("click", function (event) {
      if (!window.confirm(event.currentTarget.getAttribute("data-confirm"))) { event.preventDefault(); }
    });
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
