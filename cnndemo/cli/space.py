"""Before pushing to a Hugging Face Space: the checks a Space's build and start would make."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from .. import settings
from ..serve import add_arguments, start
from .diagnostics.server import start_server
from ..paths import CHECKOUT, EXAMPLES_DIR
from ..zoo import DEFAULT_MODEL
from .common import command


def _setup_check_space(p):
    p.add_argument("--skip-resolve", action="store_true", help="skip the pip resolution (it needs the package index)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the app")


def _front_matter(readme: Path) -> dict:
    """The Space's settings: README's YAML front matter, read by huggingface_hub (the parser the
    hub itself uses); {} when there is none."""
    from huggingface_hub import metadata_load

    return metadata_load(readme) or {}


def _outside_checkout(command: str) -> bool:
    """Whether this runs from an installed package (no README.md and requirements.txt beside
    it): the command, which reads or writes them, then says so on stderr."""
    if (CHECKOUT / "README.md").is_file() and (CHECKOUT / "requirements.txt").is_file():
        return False
    print(f"{command} works on a checkout (README.md's front matter, requirements.txt); {CHECKOUT} is an "
          "installed package. Run it in the Space's repository.", file=sys.stderr)
    return True


def _listening_on_all_interfaces(port: int) -> bool:
    """Whether some socket listens on 0.0.0.0:port or [::]:port (read from /proc/net)."""
    for table, any_addr in (("/proc/net/tcp", "00000000"), ("/proc/net/tcp6", "0" * 32)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            addr, _, hexport = local.partition(":")
            if state == "0A" and int(hexport, 16) == port and addr == any_addr:
                return True
    return False


@command("check-space", "before pushing to a Space: resolve requirements.txt for the front matter's Python, "
         "start the app as a Space does and call /predict", _setup_check_space)
def run_check_space(args) -> int:
    root = CHECKOUT
    if _outside_checkout("check-space"):
        return 2
    meta = _front_matter(root / "README.md")
    version = meta.get("python_version")
    version = None if version is None else str(version)
    ok = True
    print(f"front matter: sdk {meta.get('sdk')} {meta.get('sdk_version')}, python_version {version or 'MISSING (Spaces default to 3.10)'}")
    if not version:
        ok = False
    if not args.skip_resolve and version:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                   "--only-binary=:all:", "--python-version", version, "--target", tmp,
                   "-r", str(root / "requirements.txt")]
            r = subprocess.run(cmd, capture_output=True, text=True)
        errors = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("ERROR")]
        print(f"requirements.txt for Python {version}: " + ("resolves" if r.returncode == 0 else "FAILS"))
        for line in errors[:4]:
            print("  " + line)
        ok &= r.returncode == 0
    try:
        server = start_server({"CNNDEMO_OFFLINE": settings.environment().get("CNNDEMO_OFFLINE", "1")}, ("--no-prefetch",),
                              timeout=args.timeout, as_space=True)
    except RuntimeError as e:
        print(f"app as a Space (SPACE_ID set, GRADIO_SERVER_PORT): did NOT start: {e}")
        return 1
    try:
        from gradio_client import Client, handle_file

        everywhere = _listening_on_all_interfaces(server.port)
        print(f"app as a Space: answered on port {server.port} after {server.startup_s:.1f} s; "
              f"listening on all interfaces: {'yes' if everywhere else 'NO'}")
        ok &= everywhere
        client = Client(server.url, verbose=False)
        raw = client.predict(image=handle_file(str(EXAMPLES_DIR / "cat.jpg")), model=DEFAULT_MODEL, api_name="/predict")[-1]
        print(f"/predict: {raw['model']} ({raw['weights']} weights), top-1 {raw['top'][0]['label']}")
        ok &= raw["model"] == DEFAULT_MODEL and len(raw["top"]) == 5
    finally:
        server.stop()
    print("ready to push" if ok else "NOT ready: see above")
    return 0 if ok else 1


@command("serve", "start the web app (what `python app.py` starts in a checkout)",
         lambda p: add_arguments(p, under_cli=True))
def run_serve(args) -> int:
    return start(args)


# ----------------------------------------------------------------------------- hardware profiles

# ZeroGPU runs Python 3.10.13 and a list of supported torch releases that Hugging Face updates
# (https://huggingface.co/docs/hub/spaces-zerogpu). This set resolved and installed for Python
# 3.10.13 on 2026-12-01 with torch 2.8.0 on that list; the suite's non-slow part passes in it.
ZEROGPU_PINS = ("torch==2.8.0", "torchvision==0.23.0", "gradio==6.31.0", "captum==0.9.0", "pillow==12.3.0",
                "safetensors==0.8.0", "matplotlib==3.10.9", "numpy==2.2.6", "pandas==2.3.3", "mlxtend==0.23.4",
                "scikit-learn==1.7.2", "scipy==1.15.3", "tqdm==4.70.1", "spaces==0.51.3")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROFILES = {
    # name: (python_version, suggested_hardware, what it gives)
    "cpu": ("3.12", "cpu-basic", "CPU basic, with PyTorch's CPU-only wheels (about 190 MB instead of about 3 GB)"),
    "gpu": ("3.12", "t4-small", "a dedicated GPU: requirements.txt as it is (PyPI's CUDA wheels)"),
    "zerogpu": ("3.10", "zero-a10g", "ZeroGPU: Python 3.10 and torch 2.8.0; the app on the CPU, Compare's "
                                     "benchmark as spaces.GPU tasks"),
}


def profile_requirements(name: str, base: str) -> str:
    """requirements.txt for a hardware profile, from the checkout's own (``base``, its text)."""
    if name == "gpu":
        return base
    if name == "zerogpu":
        return ("# ZeroGPU (python -m cnndemo space-config zerogpu): Python 3.10.13 and a torch release on its list.\n"
                + "\n".join(ZEROGPU_PINS) + "\n")
    out = ["# CPU basic (python -m cnndemo space-config cpu): PyTorch's CPU-only wheels, from its own index.",
           f"--extra-index-url {CPU_INDEX}"]
    for line in base.splitlines():
        pkg = line.split("==")[0].strip()
        out.append(f"{line.strip()}+cpu" if pkg in ("torch", "torchvision") and "==" in line else line)
    return "\n".join(out) + "\n"


def _setup_space_config(p):
    p.add_argument("profile", choices=list(PROFILES), help="the Space's hardware: cpu, gpu or zerogpu")
    p.add_argument("--write", action="store_true",
                   help="write requirements.txt and README's front matter (python_version, suggested_hardware) "
                        "in this checkout; without it, print them")


@command("space-config", "requirements.txt and front matter for a Space's hardware (cpu, gpu, zerogpu)",
         _setup_space_config)
def run_space_config(args) -> int:
    from huggingface_hub import metadata_save

    if _outside_checkout("space-config"):
        return 2
    readme, reqs = CHECKOUT / "README.md", CHECKOUT / "requirements.txt"
    python, hardware, what = PROFILES[args.profile]
    text = profile_requirements(args.profile, reqs.read_text())
    if not args.write:
        print(f"# {args.profile}: {what}\n# front matter: python_version \"{python}\", suggested_hardware {hardware}\n"
              + text, end="")
        return 0
    meta = _front_matter(readme)
    meta.update(python_version=python, suggested_hardware=hardware)
    metadata_save(readme, meta)
    reqs.write_text(text)
    print(f"wrote {reqs} and {readme}'s front matter for {args.profile}: {what}")
    return 0
