// Light and dark themes: the system's until the user picks one (remembered).

const THEME_KEY = "roomcast.theme";

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  const next = theme === "dark" ? "light" : "dark";
  document.getElementById("theme-toggle").setAttribute("aria-label", `Switch to ${next} theme`);
}

/** Apply the saved (or the system's) theme and wire the ◐ button. */
export function setupTheme() {
  const saved = localStorage.getItem(THEME_KEY);
  const dark = saved ? saved === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
  applyTheme(dark ? "dark" : "light");
  document.getElementById("theme-toggle").addEventListener("click", () => {
    const theme = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    localStorage.setItem(THEME_KEY, theme);
    applyTheme(theme);
  });
}
