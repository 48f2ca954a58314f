"""Run notebooks in JupyterLab in a real browser (Debian Chromium driven by Selenium), as a user would.

``make browser-test`` calls this script; it is not a pytest module (``pytest tests`` does not collect it).

What it does, leaving the project's work tree as it was:

1. copies the project (tracked files plus untracked files git does not ignore) into a scratch folder under
   ``build/browser/project``, makes that copy a git repository of its own (one commit), so that the notebooks
   run exactly as shipped against the committed results and ``git status`` of the copy afterwards says whether
   running them changed a committed file;
2. starts JupyterLab from the project's venv on 127.0.0.1 (a free port, a random token, no browser opened, its
   root the copy's ``notebooks/``, its user settings and workspaces in the scratch folder: no autosave, no
   news pop-up, every cell kept in the page), with the kernel importing ``afr`` from the copy;
3. opens each notebook in Chromium (headless, fresh profile), runs it with Run > Run All Cells, waits until
   no cell is queued or running and the kernel is idle, and fails on any cell that shows an error
   (a traceback); a screenshot is taken while a cell has been running for a while (02: training) and at the end;
4. in 07 finds the explorer's threshold slider, screenshots it, moves it with the keyboard (ArrowRight on its
   focused handle) and checks the explorer's text output changes, then screenshots it again;
5. checks ``git status --porcelain`` of the copy (nothing changed by running the notebooks as shipped);
6. then does what a user does next in 02: changes a parameter (appends ``epochs = 2`` to the parameters cell, a new
   run with its own tag, so no committed record is replaced), runs all cells again, checks that the training cell
   shows a progress bar while it trains and that no cell errs (screenshots ``02_baseline-retrain-*``);
7. checks the project's own work tree is unchanged by this script.

Screenshots go to ``build/browser/screenshots/``. Exit status 0 when every check passed, 1 otherwise; each
check is printed as PASS/FAIL with the reason.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000"]
# JupyterLab user settings for a reproducible page: notebooks are never saved behind our back (the copy's git
# status must show only what the code wrote), no news/update notification over the page, and every cell stays
# in the DOM (no windowing) so that outputs far down the notebook can be checked.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}
# A cell whose output gets its own screenshot at the end (02: the training cell, its progress and history).
FOCUS_CELLS = {"02_baseline": ("train_or_reuse(", "training")}
RUNNING_SCREENSHOT_AFTER_S = 20.0  # a cell running this long gets a "running" screenshot (02: training progress)
# What a user does next in 02: change a parameter and run again. Two epochs make a run with a tag of its own (the
# committed run is neither reused nor replaced), so 02 trains, with its progress bar, in about a minute.
RETRAIN_NOTEBOOK, RETRAIN_PARAMETER = "02_baseline.ipynb", "\nepochs = 2"


class Report:
    """PASS/FAIL lines, printed as they come and written to ``log`` (build/browser/report.txt)."""

    def __init__(self, log: Path) -> None:
        self.failures: list[str] = []
        self.log = open(log, "w")

    def print(self, line: str) -> None:
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        line = f"{'PASS' if ok else 'FAIL'}  {what}" + (f": {detail}" if detail else "")
        self.print(line)
        if not ok:
            self.failures.append(line)
        return ok

    def note(self, text: str) -> None:
        self.print(f"      {text}")


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def copy_project(destination: Path) -> None:
    """Tracked files and untracked ones git does not ignore, as they are on disk, into a fresh git repository."""
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=PROJECT).split("\0")
    for name in filter(None, listed):
        source = PROJECT / name
        if not source.is_file():  # deleted in the work tree but still in the index
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    quiet = ["-c", "user.name=browser-test", "-c", "user.email=browser-test@localhost", "-c", "commit.gpgsign=false"]
    git("init", "-q", cwd=destination)
    git("add", "-A", cwd=destination)
    git(*quiet, "commit", "-q", "-m", "project as copied for the browser test", cwd=destination)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_jupyterlab(copy: Path, scratch: Path, port: int, token: str, log_path: Path) -> subprocess.Popen:
    settings_dir = scratch / "lab-user-settings"
    for name, values in LAB_SETTINGS.items():
        path = settings_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = dict(os.environ)
    # The kernel imports afr from the copy; the copy's results/, figures/ and runs/ are the ones written.
    env["PYTHONPATH"] = os.pathsep.join([str(copy), *filter(None, [os.environ.get("PYTHONPATH")])])
    for variable in ("AFR_RESULTS", "AFR_FIGURES", "AFR_RUNS"):
        env.pop(variable, None)
    env["AFR_DATA"] = str(Path(os.environ.get("AFR_DATA", PROJECT / "data" / "processed")).resolve())
    env["AFR_SHARED"] = str(Path(os.environ.get("AFR_SHARED", PROJECT.parent / "shared")).resolve())
    env["JUPYTER_RUNTIME_DIR"] = str(scratch / "jupyter-runtime")
    env["JUPYTERLAB_WORKSPACES_DIR"] = str(scratch / "lab-workspaces")
    env["JUPYTERLAB_SETTINGS_DIR"] = str(settings_dir)
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={copy / 'notebooks'}", f"--LabApp.user_settings_dir={settings_dir}",
               f"--LabApp.workspaces_dir={scratch / 'lab-workspaces'}", "--ServerApp.open_browser=False"]
    if os.geteuid() == 0:  # CI machines and containers run as root
        command.append("--allow-root")
    log = open(log_path, "w")
    return subprocess.Popen(command, cwd=copy / "notebooks", env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def api(port: int, token: str, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}?token={token}", timeout=10) as response:
        return json.load(response)


def wait_for_server(server: subprocess.Popen, port: int, token: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with status {server.returncode} before answering")
        try:
            api(port, token, "/api/status")
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer on 127.0.0.1:{port} within {timeout:.0f} s")


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own session: the server and its kernels
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def start_browser(profile: Path):
    os.environ.setdefault("SE_AVOID_STATS", "true")  # Selenium: no usage statistics (there is no network anyway)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


# ---------------------------------------------------------------------------------------------------- the page

def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = predicate()
        except Exception:  # the page is still being built
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} (waited {timeout:.0f} s)")


NOTEBOOK_STATE_JS = """
const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
if (!panel) return null;
const cells = [...panel.querySelectorAll('.jp-Notebook .jp-Cell')];
const code = cells.filter(c => c.classList.contains('jp-CodeCell'));
const prompts = code.map(c => {
  const p = c.querySelector('.jp-InputArea-prompt');
  return p ? p.textContent.trim() : '';
});
const status = panel.querySelector('.jp-Notebook-ExecutionIndicator');
const errors = [];
code.forEach((c, i) => {
  c.querySelectorAll('.jp-OutputArea-output').forEach(o => {
    const mime = o.getAttribute('data-mime-type') || '';
    const text = o.innerText || '';
    const isError = mime === 'application/vnd.jupyter.error' ||
      (mime === 'application/vnd.jupyter.stderr' &&
       (/Traceback \\(most recent call last\\)/.test(text) || /^\\w*(Error|Exception)(: |$)/m.test(text)));
    if (isError) errors.push({cell: cells.indexOf(c), prompt: prompts[i], text: text});
  });
});
return {n_cells: cells.length, prompts: prompts, errors: errors,
        indicator: status ? status.getAttribute('data-status') : null};
"""


PROGRESS_JS = r"""
// Progress bars in the outputs of the running cell(s): tqdm.auto's ipywidgets bar (.widget-hprogress) or its text
// form ('42%|####'); scrolls the first one into view and returns their texts.
const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
if (!panel) return [];
const found = [];
panel.querySelectorAll('.jp-CodeCell').forEach(c => {
  const prompt = (c.querySelector('.jp-InputArea-prompt') || {}).textContent || '';
  if (!prompt.includes('*')) return;
  c.querySelectorAll('.jp-OutputArea-output').forEach(o => {
    const text = (o.innerText || '').trim();
    if (o.querySelector('.widget-hprogress, .widget-vprogress, progress') || /\d+%\|/.test(text)) {
      if (!found.length) o.scrollIntoView({block: 'center'});
      found.push(text.split('\n')[0].slice(0, 120));
    }
  });
});
return found;
"""

TYPE_JS = r"""
// The parameters cell: the first code cell whose source assigns 'overwrite ='; returns its editor's text.
const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
const cell = [...panel.querySelectorAll('.jp-CodeCell')].find(c => /overwrite\s*=/.test(c.innerText));
return cell ? cell.querySelector('.cm-content') : null;
"""


def type_into_parameters_cell(driver, text: str) -> str:
    """Click into the parameters cell's editor, go to its end (Ctrl+End) and type ``text`` as a user would; the
    editor's text afterwards."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    editor = wait_until(lambda: driver.execute_script(TYPE_JS), 30, "no parameters cell (with 'overwrite =')")
    scroll_to(driver, editor)
    editor.click()
    ActionChains(driver).key_down(Keys.CONTROL).send_keys(Keys.END).key_up(Keys.CONTROL).perform()
    ActionChains(driver).send_keys(text).perform()
    driver.find_element("css selector", "body").send_keys(Keys.ESCAPE)  # leave edit mode: Run All runs the new text
    time.sleep(0.5)
    return driver.execute_script("return arguments[0].innerText;", editor) or ""


def notebook_state(driver) -> dict | None:
    return driver.execute_script(NOTEBOOK_STATE_JS)


def kernel_states(port: int, token: str, name: str) -> list[str]:
    """The execution state of the kernel(s) of notebook ``name``'s session(s)."""
    return [session["kernel"]["execution_state"] for session in api(port, token, "/api/sessions")
            if session.get("kernel") and session.get("path", "").split("/")[-1] == name]


def close_notebooks(driver, port: int, token: str) -> None:
    """Close every tab (discarding the unsaved outputs: the copy's notebooks stay as shipped), then shut down
    every kernel, so that the next notebook runs alone on the cores."""
    from selenium.webdriver.common.by import By

    try:
        click_menu(driver, "File", "Close All Tabs")
        deadline = time.time() + 30
        while time.time() < deadline and driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden)"):
            for button in driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog button"):
                if button.text.strip() in ("Discard", "Don't Save", "Close"):
                    button.click()
                    break
            time.sleep(0.5)
    except Exception as error:  # not fatal: leaving the page below drops the tab anyway
        print(f"      closing the tabs: {type(error).__name__}: {error}", flush=True)
    for session in api(port, token, "/api/sessions"):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/sessions/{session['id']}?token={token}",
                                         method="DELETE")
        urllib.request.urlopen(request, timeout=30).close()


def click_menu(driver, menu: str, item: str) -> None:
    from selenium.webdriver.common.by import By

    for label in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel"):
        if label.text.strip() == menu:
            label.click()
            break
    else:
        raise RuntimeError(f"no {menu!r} menu in JupyterLab's menu bar")
    entry = wait_until(lambda: next((e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-Menu-itemLabel")
                                     if e.text.strip() == item and e.is_displayed()), None),
                       10, f"menu item {menu} > {item}")
    entry.click()


def scroll_to(driver, element) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    time.sleep(0.5)


def shoot(driver, path: Path, report: Report) -> None:
    driver.save_screenshot(str(path))
    report.note(f"screenshot {path.relative_to(PROJECT) if path.is_relative_to(PROJECT) else path}")


def error_summary(error: dict) -> str:
    lines = [line for line in error["text"].strip().splitlines() if line.strip()]
    last = next((line for line in reversed(lines) if "Error" in line or "Exception" in line), lines[-1] if lines else "")
    return f"cell {error['cell']} {error['prompt']} {last.strip()[:300]}"


def run_notebook(driver, port: int, token: str, name: str, timeout: float, shots: Path, report: Report,
                 append_to_parameters: str | None = None, label: str = "") -> bool:
    """Open, (optionally type ``append_to_parameters`` at the end of the parameters cell, as a user changes a
    parameter), Run All, wait; True when it ran to the end without an error output. ``label`` goes into the
    screenshots' names."""
    from selenium.webdriver.common.by import By

    stem = Path(name).stem + (f"-{label}" if label else "")
    driver.get(f"http://127.0.0.1:{port}/lab/tree/{name}?token={token}&reset")  # reset: no earlier tabs
    try:
        wait_until(lambda: (state := notebook_state(driver)) and state["n_cells"] > 0, 120, f"{name} did not open")
        wait_until(lambda: kernel_states(port, token, name) == ["idle"], 120, f"{name}: its kernel did not start")
    except TimeoutError as error:
        shoot(driver, shots / f"{stem}-open-failed.png", report)
        return report.check(False, f"{name} opens with a kernel", str(error))
    report.check(True, f"{name} opens in JupyterLab with a Python kernel")
    for dialog in driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog"):  # e.g. a kernel choice: keep the default
        dialog.find_element(By.CSS_SELECTOR, ".jp-mod-accept").click()
    if append_to_parameters is not None:
        typed = type_into_parameters_cell(driver, append_to_parameters)
        if not report.check(append_to_parameters.strip() in typed, f"{name}: typed {append_to_parameters.strip()!r} "
                            "at the end of the parameters cell", typed[-200:]):
            return False

    started = time.time()
    click_menu(driver, "Run", "Run All Cells")
    # Done when something has executed, no prompt is queued/running ([*]) and the kernel reports idle twice.
    running_shot = False
    progress_seen: list[str] = []
    idle_polls = 0
    state = None
    while True:
        elapsed = time.time() - started
        if elapsed > timeout:
            running = next((c for c in driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-CodeCell")
                            if "*" in c.find_element(By.CSS_SELECTOR, ".jp-InputArea-prompt").text), None)
            if running is not None:
                scroll_to(driver, running)
            shoot(driver, shots / f"{stem}-timeout.png", report)
            prompts = state["prompts"] if state else []
            waiting = next((i for i, p in enumerate(prompts) if "*" in p), None)
            return report.check(False, f"{name} runs to the end", f"still running after {timeout:.0f} s: " + (
                f"code cell {waiting + 1} of {len(prompts)} running or queued" if waiting is not None else
                f"all code cells done but the kernel not yet idle (prompts {' '.join(prompts)})"))
        state = notebook_state(driver)
        executed = state and any(p.strip("[]: ").isdigit() for p in state["prompts"])
        busy = state and any("*" in p for p in state["prompts"])
        if busy and not progress_seen:
            progress_seen = driver.execute_script(PROGRESS_JS) or []
            if progress_seen and label:
                shoot(driver, shots / f"{stem}-progress.png", report)
        if not running_shot and busy and elapsed > RUNNING_SCREENSHOT_AFTER_S:
            cells = driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-CodeCell")
            running = next((c for c in cells if "*" in c.find_element(By.CSS_SELECTOR, ".jp-InputArea-prompt").text),
                           None)
            if running is not None:
                scroll_to(driver, running)
                shoot(driver, shots / f"{stem}-1-running.png", report)
                running_shot = True
        if executed and not busy and kernel_states(port, token, name) == ["idle"]:
            idle_polls += 1
            if idle_polls >= 2:
                break
        else:
            idle_polls = 0
        time.sleep(1.0)
    report.note(f"{name}: Run All finished after {time.time() - started:.0f} s; prompts {' '.join(state['prompts'])}")
    if label:
        report.note(f"{name} ({label}): progress seen while running: {', '.join(progress_seen) or 'none'}")
        report.check(bool(progress_seen), f"{name} ({label}): a running cell shows a progress bar",
                     "" if progress_seen else "no progress bar (ipywidgets or text) appeared in any running cell")

    ok = report.check(not state["errors"], f"{name}: no cell shows an error",
                      "; ".join(error_summary(e) for e in state["errors"]))
    not_run = [i for i, p in enumerate(state["prompts"]) if not p.strip("[]: ").isdigit()]
    ok &= report.check(not not_run, f"{name}: every code cell ran",
                       f"{len(not_run)} of {len(state['prompts'])} code cells did not run (Run All stops at an error)"
                       if not_run else "")
    if state["errors"]:  # show the first error
        cells = driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell")
        scroll_to(driver, cells[state["errors"][0]["cell"]])
        shoot(driver, shots / f"{stem}-error.png", report)
    else:
        shoot(driver, shots / f"{stem}-2-done.png", report)
    focus = FOCUS_CELLS.get(stem)
    if focus is not None:
        cell = next((c for c in driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-CodeCell")
                     if focus[0] in c.find_element(By.CSS_SELECTOR, ".jp-InputArea-editor").text), None)
        if cell is None:
            report.note(f"{name}: no code cell contains {focus[0]!r}")
        else:
            outputs = cell.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")
            text = " | ".join(o.text.strip().splitlines()[0] for o in outputs if o.text.strip())
            report.note(f"{name}: {focus[1]} cell output: {text[:300] or '(none)'}")
            scroll_to(driver, outputs[0] if outputs else cell)
            shoot(driver, shots / f"{stem}-3-{focus[1]}.png", report)
    return ok


# ----------------------------------------------------------------------------------------- the explorer (07)

FIND_SLIDER_JS = """
// The explorer's threshold slider: an ipywidgets slider whose label says "threshold"; returns the slider,
// its handle (keyboard-focusable), its readout, and the widget box holding the explorer (its outputs).
const sliders = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea .widget-slider')];
const slider = sliders.find(s => /threshold/i.test((s.querySelector('.widget-label') || {}).textContent || ''))
               || sliders[0];
if (!slider) return null;
let box = slider.parentElement;
while (box && !(box.classList.contains('jp-OutputArea-output'))) box = box.parentElement;
return {slider: slider, handle: slider.querySelector('.noUi-handle, [role=slider], input[type=range]'),
        readout: slider.querySelector('.widget-readout'), box: box};
"""

EXPLORER_TEXT_JS = """
// The text of the explorer's outputs (ipywidgets Output areas), without the controls' own labels.
const box = arguments[0];
return [...box.querySelectorAll('.widget-output')].map(o => o.innerText).join('\\n----\\n');
"""


def check_explorer(driver, shots: Path, report: Report, stem: str = "07_figures") -> bool:
    from selenium.webdriver.common.keys import Keys

    try:
        found = wait_until(lambda: driver.execute_script(FIND_SLIDER_JS), 60, "no ipywidgets slider in the outputs")
    except TimeoutError as error:
        shoot(driver, shots / f"{stem}-explorer-missing.png", report)
        return report.check(False, "07: the explorer's threshold slider is shown", str(error))
    report.check(True, "07: the explorer's threshold slider is shown")
    slider, handle, readout, box = found["slider"], found["handle"], found["readout"], found["box"]
    scroll_to(driver, slider)
    wait_until(lambda: driver.execute_script(EXPLORER_TEXT_JS, box).strip(), 30, "the explorer shows no text")
    before_text = driver.execute_script(EXPLORER_TEXT_JS, box)
    before_value = readout.get_attribute("value") or readout.text if readout is not None else ""
    shoot(driver, shots / f"{stem}-explorer-before.png", report)
    if handle is None:
        return report.check(False, "07: the slider has a keyboard-focusable handle", "none found")
    handle.click()  # focus it (a click on the handle itself does not move it)
    for _ in range(5):
        handle.send_keys(Keys.ARROW_RIGHT)
        time.sleep(0.2)
    try:
        after_text = wait_until(lambda: (text := driver.execute_script(EXPLORER_TEXT_JS, box)) != before_text and text,
                                60, "the explorer's output did not change after the slider moved")
        time.sleep(1.0)  # let the table finish rendering
        after_text = driver.execute_script(EXPLORER_TEXT_JS, box)
    except TimeoutError:
        after_text = None
    after_value = readout.get_attribute("value") or readout.text if readout is not None else ""
    scroll_to(driver, slider)
    shoot(driver, shots / f"{stem}-explorer-after.png", report)
    report.check(after_value != before_value, "07: five ArrowRight presses on the focused slider move it",
                 f"readout {before_value!r} -> {after_value!r}")
    first = lambda text: (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return report.check(after_text is not None, "07: the explorer's output changes with the slider",
                        f"{first(before_text)!r} -> {first(after_text)!r}")


# ------------------------------------------------------------------------------------------------------ main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", default=sorted(p.name for p in (PROJECT / "notebooks").glob("0*.ipynb")),
                        help="notebooks (names in notebooks/) to run, in order (default: all the numbered ones)")
    parser.add_argument("--out", default=str(PROJECT / "build" / "browser"), help="scratch folder (emptied first)")
    parser.add_argument("--timeout", type=float, default=1200,
                        help="seconds per notebook's Run All (default 1200; a timeout fails with a screenshot)")
    parser.add_argument("--no-retrain", action="store_true",
                        help=f"skip the second run of {RETRAIN_NOTEBOOK} with {RETRAIN_PARAMETER.strip()!r}")
    args = parser.parse_args()

    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            print(f"{path} not found: install the Debian packages chromium and chromium-driver (make apt)")
            return 2
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    shots = out / "screenshots"
    shots.mkdir(parents=True)
    report = Report(out / "report.txt")
    project_status_before = git("status", "--porcelain", "--untracked-files=all", cwd=PROJECT)

    began = time.time()
    copy = out / "project"
    copy_project(copy)
    report.note(f"project copied to {copy} ({time.time() - began:.0f} s)")
    port, token = free_port(), secrets.token_hex(24)
    server = start_jupyterlab(copy, out, port, token, out / "jupyterlab.log")
    driver = None
    try:
        wait_for_server(server, port, token, timeout=120)
        import jupyterlab

        report.note(f"JupyterLab {jupyterlab.__version__} on 127.0.0.1:{port}, "
                    f"log {out / 'jupyterlab.log'}")
        driver = start_browser(out / "chromium-profile")
        driver.set_window_size(1400, 1000)
        report.note(f"{driver.capabilities.get('browserName')} {driver.capabilities.get('browserVersion')}")
        for name in args.notebooks:
            if not (copy / "notebooks" / name).is_file():
                report.check(False, f"{name} exists in notebooks/")
                continue
            report.print(f"== {name}")
            ran = run_notebook(driver, port, token, name, args.timeout, shots, report)
            if name.startswith("07"):
                if ran or driver.execute_script(FIND_SLIDER_JS):
                    check_explorer(driver, shots, report)
                else:
                    report.check(False, "07: the explorer's threshold slider is shown",
                                 "the notebook stopped before its explorer cell")
            close_notebooks(driver, port, token)
        changed = git("status", "--porcelain", "--untracked-files=all", cwd=copy)
        report.check(not changed, "running the notebooks as shipped leaves every committed file unchanged "
                     "(git status of the copy)", "\n" + changed.rstrip() if changed else "")
        if RETRAIN_NOTEBOOK in args.notebooks and not args.no_retrain:
            report.print(f"== {RETRAIN_NOTEBOOK}, a parameter changed ({RETRAIN_PARAMETER.strip()}) and run again")
            run_notebook(driver, port, token, RETRAIN_NOTEBOOK, args.timeout, shots, report,
                         append_to_parameters=RETRAIN_PARAMETER, label="retrain")
            close_notebooks(driver, port, token)
    except Exception as error:  # the harness itself failed: say where, keep a screenshot
        if driver is not None:
            try:
                shoot(driver, shots / "harness-error.png", report)
            except Exception:
                pass
        report.check(False, "browser test harness", f"{type(error).__name__}: {error}")
    finally:
        if driver is not None:
            driver.quit()
        stop(server)

    project_status_after = git("status", "--porcelain", "--untracked-files=all", cwd=PROJECT)
    report.check(project_status_after == project_status_before, "the project's own work tree is unchanged",
                 "git status before:\n" + project_status_before + "after:\n" + project_status_after
                 if project_status_after != project_status_before else "")
    report.print(f"screenshots: {shots}; this report: {out / 'report.txt'}; {time.time() - began:.0f} s in all")
    if report.failures:
        report.print(f"browser test FAILED: {len(report.failures)} check(s)\n" + "\n".join(report.failures))
        return 1
    report.print("browser test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
