// The pages' live part: the daemon's events (/live, server-sent events) move progress
// bars and states without a reload. Elements carry the task's id: progress-ID, status-ID.
(function () {
  if (!window.EventSource) return;
  var source = new EventSource("/live");
  source.onmessage = function (message) {
    var e = JSON.parse(message.data);
    if (e.progress !== undefined && e.progress !== null) {
      var percent = Math.max(0, Math.min(100, Math.round(e.progress * 100)));
      var bar = document.querySelector("#progress-" + e.id + " .bar");
      if (bar) bar.style.width = percent + "%";
      var text = document.getElementById("percent-" + e.id);
      if (text) text.textContent = percent + "%";
      var said = document.getElementById("message-" + e.id);
      if (said && e.message) said.textContent = e.message;
    }
    if (e.status) {
      var state = document.getElementById("status-" + e.id);
      if (state) { state.textContent = e.status; state.className = "state " + e.status; }
    }
  };
})();
