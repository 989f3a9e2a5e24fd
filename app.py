"""CNN Zoo Lab: `python app.py` starts the app (see --help); `gradio app.py` runs it with reload.

Run as a script, the options are read first (``--help`` answers at once) and the demo is built
just before it is launched. Imported (Hugging Face Spaces and Gradio's reload mode look for
``demo``), the demo is built at import; building it loads no model and touches no network.
The same app starts from an installed package with ``cnndemo serve``.
"""

from __future__ import annotations

from cnndemo.serve import main, parse_args  # noqa: F401 (parse_args: for scripts and tests)

if __name__ == "__main__":
    main()
else:
    from cnndemo.ui import build_app

    demo = build_app()
