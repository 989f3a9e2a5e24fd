"""The Start panel: three steps for a first visit, on a network whose answers mean something.

With GoogLeNet's ImageNet weights at hand (cached, or fetched on first use) the steps use it on
the cat photo. Without them (offline, or the fetch failed) every photo would get the same
meaningless top-5 and knocking out a branch would change nothing, so the steps use the MNIST
Inception net, trained here and shipped with the app, on a drawn digit, and say why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ..weights import why_unavailable
from ..zoo import DEFAULT_MODEL, DIGIT_SHOWCASE, ZOO
from .common import EXAMPLES_DIR


@dataclass(frozen=True)
class Lesson:
    model: str
    image: Path
    button: str
    steps: str
    why: str | None = None  # set when the lesson left the default model, and why

    @property
    def markdown(self) -> str:
        head = "### Start here: three steps, five minutes\n"
        if self.why:
            head += f"*{self.why}*\n\n"
        return head + self.steps


def _branch_names(key: str) -> str:
    spec = ZOO[key]
    return ", ".join(b.name for b in spec.block(spec.default_block).branches)


def _photo_lesson() -> Lesson:
    spec = ZOO[DEFAULT_MODEL]
    return Lesson(
        DEFAULT_MODEL, EXAMPLES_DIR / "cat.jpg", "1 · Show me the cat",
        f"1. **Predict.** Click *Show me the cat*: {spec.name} reads the photo and lists its top-5 guesses, "
        "with the 224 × 224 image it really saw.\n"
        "2. **Look inside a block.** Under *Branches*, each column of the block diagram is one parallel "
        "path of an Inception block (1×1, 3×3, 3×3b, pool; GoogLeNet's paper calls 3×3b its 5×5 path, and "
        "torchvision builds it with a 3×3 kernel). Click a column to see what that path saw; "
        "the table says how much of the block's output each one carries.\n"
        "3. **Ask why.** Press *Knock it out* to remove that path and watch the top-5 change, then open "
        "the *Attributions* tab and press *Explain* to see which pixels drove the answer.",
    )


def _digit_lesson(reason: str) -> Lesson:
    spec, default = ZOO[DIGIT_SHOWCASE], ZOO[DEFAULT_MODEL]
    return Lesson(
        DIGIT_SHOWCASE, EXAMPLES_DIR / "digits" / "six.png", "1 · Show me a digit",
        f"1. **Predict.** Click *Show me a digit*: the {spec.name} reads a drawn 6 and lists its top-5 "
        f"guesses, with the {spec.input_size[1]} × {spec.input_size[2]} image it really saw.\n"
        f"2. **Look inside a block.** Under *Branches*, each column of the diagram of {spec.default_block} is "
        f"one parallel path ({_branch_names(DIGIT_SHOWCASE)}). Click a column to see what that path saw; "
        "the table says how much of the block's output each one carries.\n"
        "3. **Ask why.** Press *Knock it out* to remove that path and watch the probability of the 6 change "
        "(try each path: they do not matter equally), then draw your own digits on the *Digits* tab.",
        why=(f"{default.name}'s ImageNet weights are not available ({reason}): untrained, the network "
             "computes (its top-5 changes with the photo) but means nothing, and no branch has learned "
             f"what to look for. So these steps use the {spec.name}, trained on MNIST and shipped with the app."),
    )


# After step 1, the weights banner and the top-5 on screen (on a phone they are three screens
# below the panel); left where they are when the top-5 is already in view.
SCROLL_TO_RESULT_JS = """
() => {
  const box = document.querySelector('#explore-top5');
  if (!box) return;
  const r = box.getBoundingClientRect();
  const head = document.querySelector('#explore-banner') || box;
  if (r.top < 0 || r.bottom > window.innerHeight) head.scrollIntoView({behavior: 'smooth', block: 'start'});
}
"""


def first_lesson() -> Lesson:
    """The lesson this machine can teach now (its weights on disk, or fetchable)."""
    reason = why_unavailable(ZOO[DEFAULT_MODEL].weights)
    return _photo_lesson() if reason is None else _digit_lesson(reason)


def build() -> dict:
    """The panel, drawn for the lesson this machine can teach when the app is built; ``refresh``
    redraws it when a page opens (weights may have arrived, or a fetch failed, meanwhile)."""
    lesson = first_lesson()
    c: dict = {}
    with gr.Column(elem_classes=["cz-start"], elem_id="start-here") as c["panel"]:
        c["steps"] = gr.Markdown(lesson.markdown, elem_id="start-steps")
        with gr.Row():
            c["go"] = gr.Button(lesson.button, variant="primary", elem_id="start-cat")
            c["close"] = gr.Button("I know my way around: hide this", variant="secondary")
    return c


def refresh():
    lesson = first_lesson()
    return {"steps": lesson.markdown, "go": gr.Button(lesson.button)}


def go(current_model: str):
    """Step 1, first half: the lesson's model (left alone when already chosen), in Explore. The
    image follows in a second step (``image``): set together, the model's chain could empty the
    image's finished result a moment after it was shown."""
    lesson = first_lesson()
    model = gr.skip() if current_model == lesson.model else lesson.model
    return {"model": model, "tabs": gr.Tabs(selected="explore")}


def image():
    """Step 1, second half: the lesson's image."""
    return {"image": str(first_lesson().image)}


__all__ = ["Lesson", "build", "first_lesson", "go", "image", "refresh"]
