// A recorded call's player: the transcript and the operators' requests as a timeline; a click
// on a moment seeks there and plays. The moment being heard is marked as it plays.
const box = document.querySelector("[data-recording]");

if (box) {
  const player = box.querySelector("[data-recording-audio]");
  const marks = [...box.querySelectorAll("[data-seek]")];
  box.addEventListener("click", (event) => {
    const mark = event.target.closest("[data-seek]");
    if (!mark) return;
    player.currentTime = Number(mark.dataset.seek);
    player.play().catch(() => {}); // autoplay refused: the position is set, the operator presses play
  });
  player.addEventListener("timeupdate", () => {
    let current = null;
    for (const mark of marks) if (Number(mark.dataset.seek) <= player.currentTime + 0.05) current = mark;
    for (const mark of marks) {
      mark.closest("li").classList.toggle("current", mark === current);
      if (mark === current) mark.setAttribute("aria-current", "time");
      else mark.removeAttribute("aria-current");
    }
  });
}
