"""Synthetic vision-language data for the `dsvl demo`: deterministic by seed, no downloads.

Every example is drawn from its own `random.Random(f"{seed}/{split}/{index}")`, so a dataset is the same on every
machine, any slice can be regenerated alone, and the held-out split never shares a random stream with training.

Images (varied size and aspect ratio, light backgrounds) come in three kinds:

- `shapes`: one to four shapes of one colour and one kind (circle, square, triangle); a single shape sits on the
  left, right, top or bottom of the canvas.
- `text`: a rendered word (from a small vocabulary) or a digit, OCR-like.
- `chart`: a bar chart of three or four bars of distinct colours; one bar is clearly the tallest.

Questions are built so that the answer needs the image and is one short word:

| type     | question (one of a few phrasings)  | answers                                   |
|----------|-------------------------------------|-------------------------------------------|
| colour   | What colour is the shape?           | red, green, blue, yellow, purple, orange  |
| shape    | What shape is shown?                | circle, square, triangle                  |
| count    | How many shapes are there?          | one, two, three, four                     |
| position | Where is the shape?                 | left, right, top, bottom                  |
| word     | What word is written?               | cat, dog, sun, tree, fish, book, moon, bird |
| digit    | What number is written?             | 0 ... 9                                   |
| bar      | What colour is the tallest bar?     | the six colours                           |

Datasets (the `datasets` library, the schemas the training and evaluation code read):

- captions (stages 1 and 2, and the SigLIP warm-up): `{"image": Image, "caption": str}`
- text corpus (LLM warm-up, language share of stage 2): `{"text": str}`
- conversations (stage 3, and a small share of stage 2): `{"images": [Image], "messages": [...]}` in the Hugging
  Face chat format (`{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ...}]}`): single and
  multi-turn, some with two images, some text-only.
- held-out test set: `{"image": Image, "question": str, "answer": str, "question_type": str}`, drawn from a seed
  stream disjoint from every training split.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from functools import lru_cache

import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

COLOURS = {
    "red": (215, 35, 35),
    "green": (30, 155, 55),
    "blue": (35, 85, 220),
    "yellow": (235, 195, 20),
    "purple": (135, 55, 175),
    "orange": (245, 130, 15),
}
SHAPES = ("circle", "square", "triangle")
COUNT_WORDS = ("one", "two", "three", "four")
POSITIONS = ("left", "right", "top", "bottom")
WORDS = ("cat", "dog", "sun", "tree", "fish", "book", "moon", "bird")
DIGITS = tuple(str(d) for d in range(10))

QUESTION_TYPES = ("colour", "shape", "count", "position", "word", "digit", "bar")
# The answers each question type can have: chance level is one over their number.
ANSWERS = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "count": COUNT_WORDS,
    "position": POSITIONS,
    "word": WORDS,
    "digit": DIGITS,
    "bar": tuple(COLOURS),
}
QUESTIONS = {
    "colour": ("What colour is the shape?", "Which colour do you see?", "What is the colour of the shapes?"),
    "shape": ("What shape is shown?", "Which shape is in the picture?", "What kind of shape is it?"),
    "count": ("How many shapes are there?", "How many shapes do you see?", "Count the shapes."),
    "position": ("Where is the shape?", "On which side is the shape?", "Where in the picture is the shape?"),
    "word": ("What word is written?", "Read the word in the image.", "Which word do you see?"),
    "digit": ("What number is written?", "Read the digit in the image.", "Which number do you see?"),
    "bar": ("What colour is the tallest bar?", "Which bar is the tallest?", "Which colour has the highest bar?"),
}
# Questions that only make sense for some images of a kind.
SHAPE_QUESTION_TYPES = ("colour", "shape", "count", "position")
QUESTION_TYPES_OF_KIND = {"shapes": SHAPE_QUESTION_TYPES, "text": ("word", "digit"), "chart": ("bar",)}

BACKGROUND_RANGE = (225, 255)
TEXT_INK = ((20, 20, 20), (40, 40, 120), (110, 20, 20), (20, 90, 40))


@dataclass
class Scene:
    """What an image shows, enough to caption it and to answer every question about it."""

    kind: str  # "shapes", "text" or "chart"
    colour: str | None = None
    shape: str | None = None
    count: int = 0
    position: str | None = None  # only for a single shape
    text: str | None = None  # the word or digit of a text image
    bars: list[tuple[str, float]] = field(default_factory=list)  # (colour, height in [0, 1]) per bar, left to right

    @property
    def tallest_bar(self) -> str:
        return max(self.bars, key=lambda bar: bar[1])[0]

    def question_types(self) -> tuple[str, ...]:
        if self.kind == "shapes":
            return SHAPE_QUESTION_TYPES if self.count == 1 else ("colour", "shape", "count")
        if self.kind == "text":
            return ("digit",) if self.text in DIGITS else ("word",)
        return ("bar",)

    def answer(self, question_type: str) -> str:
        if question_type not in self.question_types():
            raise ValueError(f"A {self.kind} image cannot answer a {question_type!r} question.")
        return {
            "colour": lambda: self.colour,
            "shape": lambda: self.shape,
            "count": lambda: COUNT_WORDS[self.count - 1],
            "position": lambda: self.position,
            "word": lambda: self.text,
            "digit": lambda: self.text,
            "bar": lambda: self.tallest_bar,
        }[question_type]()

    def caption(self) -> str:
        if self.kind == "shapes":
            # "circle shapes", not "circles": the shape is one token in every caption, which the towers' warm-up
            # (caption-token prediction) then learns from every shape image rather than half of them.
            if self.count == 1:
                return f"One {self.colour} {self.shape} on the {self.position}."
            return f"{COUNT_WORDS[self.count - 1].capitalize()} {self.colour} {self.shape} shapes."
        if self.kind == "text":
            what = "number" if self.text in DIGITS else "word"
            return f"The {what} {self.text} written in ink."
        return f"A bar chart of {COUNT_WORDS[len(self.bars) - 1]} bars; the tallest bar is {self.tallest_bar}."


# -- rendering ------------------------------------------------------------------------------------------------------
def _canvas(rng: random.Random) -> PIL.Image.Image:
    """A light canvas of random size (long side 96-192 px) and aspect ratio (2:3 to 3:2), so the processor's
    resize-and-pad is exercised while small shapes stay visible at the demo's 128 px."""
    aspect = math.exp(rng.uniform(math.log(2 / 3), math.log(3 / 2)))
    long_side = rng.randint(96, 192)
    short_side = int(long_side / aspect) if aspect >= 1 else int(long_side * aspect)
    width, height = (long_side, short_side) if aspect >= 1 else (short_side, long_side)
    background = tuple(rng.randint(*BACKGROUND_RANGE) for _ in range(3))
    return PIL.Image.new("RGB", (width, height), background)


def _draw_shape(draw: PIL.ImageDraw.ImageDraw, shape: str, centre: tuple[float, float], radius: float, fill) -> None:
    x, y = centre
    if shape == "circle":
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill)
    elif shape == "square":
        # The circle's bounding box, so the two differ by their corners rather than size or place.
        draw.rectangle([x - radius, y - radius, x + radius, y + radius], fill=fill)
    else:
        draw.polygon([(x, y - radius), (x - radius, y + radius * 0.8), (x + radius, y + radius * 0.8)], fill=fill)


def _position_centre(position: str, width: int, height: int, radius: float, rng: random.Random) -> tuple[float, float]:
    """A centre clearly on one side: in the outer fifth along that axis, near the middle of the other axis."""
    along = rng.uniform(0.15, 0.22)
    across = 0.5 + rng.uniform(-0.1, 0.1)
    x_fraction, y_fraction = {
        "left": (along, across), "right": (1 - along, across), "top": (across, along), "bottom": (across, 1 - along)
    }[position]
    x = min(max(x_fraction * width, radius), width - radius)
    y = min(max(y_fraction * height, radius), height - radius)
    return x, y


def _render_shapes(rng: random.Random) -> tuple[PIL.Image.Image, Scene]:
    image = _canvas(rng)
    width, height = image.size
    scene = Scene(kind="shapes", colour=rng.choice(list(COLOURS)), shape=rng.choice(SHAPES), count=rng.randint(1, 4))
    draw = PIL.ImageDraw.Draw(image)
    short = min(width, height)
    if scene.count == 1:
        scene.position = rng.choice(POSITIONS)
        # Along the short axis a side is only clear for a smaller shape.
        radius = short * rng.uniform(0.2, 0.25)
        centres = [_position_centre(scene.position, width, height, radius, rng)]
    else:
        radius = short * rng.uniform(0.17, 0.21)
        centres, radius = _non_overlapping_centres(rng, scene.count, width, height, radius)
    for centre in centres:
        _draw_shape(draw, scene.shape, centre, radius, COLOURS[scene.colour])
    return image, scene


def _non_overlapping_centres(rng, count, width, height, radius) -> tuple[list[tuple[float, float]], float]:
    """`count` centres whose shapes of `radius` do not touch, and that radius (shrunk if the canvas is crowded)."""
    for _ in range(200):
        margin, centres = radius * 1.1, []
        for _ in range(200):
            candidate = (rng.uniform(margin, width - margin), rng.uniform(margin, height - margin))
            # Bounding boxes apart (with a gap), which keeps squares apart as well as circles and triangles.
            if all(max(abs(candidate[0] - x), abs(candidate[1] - y)) > 2.3 * radius for x, y in centres):
                centres.append(candidate)
                if len(centres) == count:
                    return centres, radius
        radius *= 0.9  # a crowded canvas: shrink and retry (deterministic, the stream is the same)
    raise RuntimeError("could not place the shapes")  # unreachable for the sizes above


@lru_cache(maxsize=64)
def _font(size: int) -> PIL.ImageFont.ImageFont:
    try:
        return PIL.ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError, ImportError):
        return PIL.ImageFont.load_default()  # bitmap fallback: smaller text, still deterministic


def _render_text(rng: random.Random) -> tuple[PIL.Image.Image, Scene]:
    image = _canvas(rng)
    width, height = image.size
    text = rng.choice(DIGITS) if rng.random() < 0.5 else rng.choice(WORDS)
    draw = PIL.ImageDraw.Draw(image)
    # Large enough to survive the processor's resize to the towers' sizes, with room to move around.
    size = int(min(height * rng.uniform(0.7, 0.85), width / (0.62 * len(text) + 0.3)))
    font = _font(max(size, 10))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=max(1, size // 25))
    text_w, text_h = right - left, bottom - top
    # Near the centre: OCR at the demo's resolution is about reading glyphs, not finding them.
    x = (width - text_w) / 2 + rng.uniform(-0.1, 0.1) * (width - text_w) - left
    y = (height - text_h) / 2 + rng.uniform(-0.1, 0.1) * (height - text_h) - top
    ink = rng.choice(TEXT_INK)
    # Bold strokes (about a 25th of the font size): thin hairlines vanish at the towers' 16 px patches.
    draw.text((x, y), text, fill=ink, font=font, stroke_width=max(1, size // 25), stroke_fill=ink)
    return image, Scene(kind="text", text=text)


def _render_chart(rng: random.Random) -> tuple[PIL.Image.Image, Scene]:
    image = _canvas(rng)
    width, height = image.size
    num_bars = rng.randint(3, 4)
    colours = rng.sample(list(COLOURS), num_bars)
    tallest = rng.randrange(num_bars)
    # The tallest bar beats every other by at least 20% of the axis, so the answer is never a close call.
    heights = [1.0 if i == tallest else rng.uniform(0.2, 0.75) for i in range(num_bars)]
    heights[tallest] = rng.uniform(max(heights[i] for i in range(num_bars) if i != tallest) + 0.2, 1.0)
    draw = PIL.ImageDraw.Draw(image)
    base, top = height * 0.92, height * 0.08
    draw.line([(width * 0.05, base), (width * 0.95, base)], fill=(60, 60, 60), width=max(1, height // 64))
    slot = width * 0.9 / num_bars
    for index, (colour, bar_height) in enumerate(zip(colours, heights)):
        x0 = width * 0.05 + slot * (index + 0.15)
        x1 = width * 0.05 + slot * (index + 0.85)
        draw.rectangle([x0, base - (base - top) * bar_height, x1, base], fill=COLOURS[colour])
    return image, Scene(kind="chart", bars=list(zip(colours, heights)))


RENDERERS = {"shapes": _render_shapes, "text": _render_text, "chart": _render_chart}
# Captions: shapes carry four question types and the finest detail (a square's corners against a circle), glyphs are
# slow for the towers to learn, bar charts fast: charts get a small share.
KIND_WEIGHTS = {"shapes": 0.55, "text": 0.35, "chart": 0.1}


def example_rng(seed: int, split: str, index: int) -> random.Random:
    """The random stream of one example: independent of every other example and split."""
    return random.Random(f"dsvl-demo/{seed}/{split}/{index}")


IMAGE_KINDS = tuple(KIND_WEIGHTS)
KIND_OF_QUESTION = {question_type: kind for kind, types in QUESTION_TYPES_OF_KIND.items() for question_type in types}


def check_image_kinds(kinds) -> tuple[str, ...]:
    """`kinds` as a tuple, or a clear error when it is empty or names an unknown kind."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds or any(kind not in KIND_WEIGHTS for kind in kinds):
        raise ValueError(f"Image kinds must be a non-empty selection of {IMAGE_KINDS}; got {kinds!r}.")
    return kinds


def question_types(kinds=IMAGE_KINDS) -> tuple[str, ...]:
    """The question types that images of `kinds` answer, in `QUESTION_TYPES` order."""
    kinds = check_image_kinds(kinds)
    return tuple(question_type for question_type in QUESTION_TYPES if KIND_OF_QUESTION[question_type] in kinds)


def render_image(rng: random.Random, kind: str | None = None, kinds=IMAGE_KINDS) -> tuple[PIL.Image.Image, Scene]:
    """One synthetic image and its scene description; `kind` picks shapes/text/chart, else drawn by weight among
    `kinds`."""
    if kind is None:
        weights = {name: weight for name, weight in KIND_WEIGHTS.items() if name in kinds}
        kind = rng.choices(list(weights), weights=list(weights.values()))[0]
    if kind not in RENDERERS:
        raise ValueError(f"Unknown image kind {kind!r}; use one of {sorted(RENDERERS)}.")
    return RENDERERS[kind](rng)


def render_for_question_type(rng: random.Random, question_type: str) -> tuple[PIL.Image.Image, Scene]:
    """An image that can answer `question_type` (a shape scene with one shape for `position`, ...)."""
    if question_type not in QUESTION_TYPES:
        raise ValueError(f"Unknown question type {question_type!r}; use one of {QUESTION_TYPES}.")
    kind = KIND_OF_QUESTION[question_type]
    while True:  # rejection on the same stream stays deterministic
        image, scene = render_image(rng, kind)
        if question_type in scene.question_types():
            return image, scene


# -- text: corpus and text-only questions ---------------------------------------------------------------------------
OBJECT_COLOURS = {
    "banana": "yellow", "lemon": "yellow", "tomato": "red", "strawberry": "red", "grass": "green", "leaf": "green",
    "sky": "blue", "sea": "blue", "plum": "purple", "grape": "purple", "carrot": "orange", "pumpkin": "orange",
}
SHAPE_SIDES = {"triangle": "three", "square": "four", "circle": "no"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WORD_FACTS = {
    "cat": "A cat is a small animal that says meow.",
    "dog": "A dog is an animal that can bark.",
    "sun": "The sun is hot and bright in the day.",
    "tree": "A tree has a trunk and green leaves.",
    "fish": "A fish lives in water and can swim.",
    "book": "A book has many pages to read.",
    "moon": "The moon shines in the sky at night.",
    "bird": "A bird has wings and can fly.",
}
NAMES = ("Anna", "Ben", "Cleo", "David", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kira", "Leo")


def _corpus_sentence(rng: random.Random) -> str:
    """One templated English fact; the vocabulary covers every word the questions and answers use."""
    template = rng.randrange(10)
    if template == 0:
        thing, colour = rng.choice(list(OBJECT_COLOURS.items()))
        return f"The colour of a {thing} is {colour}." if rng.random() < 0.5 else f"A {thing} is {colour}."
    if template == 1:
        shape, sides = rng.choice(list(SHAPE_SIDES.items()))
        return f"A {shape} has {sides} corners." if shape != "circle" else "A circle is round and has no corners."
    if template == 2:
        a, b = rng.randint(0, 4), rng.randint(0, 5)
        return f"{NUMBER_WORDS[a].capitalize()} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]}."
    if template == 3:
        n = rng.randint(0, 8)
        return f"The number after {NUMBER_WORDS[n]} is {NUMBER_WORDS[n + 1]}, written {n + 1}."
    if template == 4:
        return WORD_FACTS[rng.choice(WORDS)]
    if template == 5:
        name, count = rng.choice(NAMES), rng.randint(1, 4)
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        noun = shape if count == 1 else f"{shape}s"
        return f"{name} drew {COUNT_WORDS[count - 1]} {colour} {noun}."
    if template == 6:
        name, position, colour = rng.choice(NAMES), rng.choice(POSITIONS), rng.choice(list(COLOURS))
        return f"{name} put the {colour} {rng.choice(SHAPES)} on the {position} of the page."
    if template == 7:
        opposite = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
        position = rng.choice(POSITIONS)
        return f"The {position} is the opposite of the {opposite[position]}."
    if template == 8:
        colours = rng.sample(list(COLOURS), 3)
        return f"In the chart the {colours[0]} bar is taller than the {colours[1]} and {colours[2]} bars."
    name, word = rng.choice(NAMES), rng.choice(WORDS + DIGITS)
    return f"{name} wrote the {'number' if word in DIGITS else 'word'} {word} on the board."


def corpus_document(rng: random.Random) -> str:
    """A short paragraph of facts (three to six sentences)."""
    return " ".join(_corpus_sentence(rng) for _ in range(rng.randint(3, 6)))


def text_question(rng: random.Random) -> tuple[str, str]:
    """A text-only question whose answer the corpus teaches."""
    kind = rng.randrange(4)
    if kind == 0:
        thing, colour = rng.choice(list(OBJECT_COLOURS.items()))
        return f"What colour is a {thing}?", colour
    if kind == 1:
        shape = rng.choice(["triangle", "square"])
        return f"How many corners does a {shape} have?", SHAPE_SIDES[shape]
    if kind == 2:
        a, b = rng.randint(0, 4), rng.randint(0, 5)
        return f"What is {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]}?", NUMBER_WORDS[a + b]
    n = rng.randint(0, 8)
    return f"What number comes after {NUMBER_WORDS[n]}?", NUMBER_WORDS[n + 1]


# -- examples of each dataset ---------------------------------------------------------------------------------------
def caption_example(seed: int, index: int, split: str = "captions", kinds=IMAGE_KINDS) -> dict:
    rng = example_rng(seed, split, index)
    image, scene = render_image(rng, kinds=kinds)
    return {"image": image, "caption": scene.caption()}


def text_example(seed: int, index: int) -> dict:
    return {"text": corpus_document(example_rng(seed, "text", index))}


def _user(text: str, num_images: int = 0) -> dict:
    return {"role": "user", "content": [{"type": "image"}] * num_images + [{"type": "text", "text": text}]}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _qa(rng: random.Random, scene: Scene, question_type: str | None = None) -> tuple[str, str]:
    question_type = question_type or rng.choice(scene.question_types())
    return rng.choice(QUESTIONS[question_type]), scene.answer(question_type)


def conversation_example(seed: int, index: int, split: str = "conversations", kinds=IMAGE_KINDS) -> dict:
    """A stage-3 conversation: mostly one image and one question, also multi-turn, two-image and text-only ones;
    images of `kinds` only."""
    rng = example_rng(seed, split, index)
    form = rng.choices(["single", "multi_turn", "two_images", "text_only"], weights=[0.6, 0.2, 0.1, 0.1])[0]
    if form == "two_images" and "shapes" not in kinds:
        form = "single"  # the two-image questions are about shape scenes
    if form == "text_only":
        messages = []
        for turn in range(rng.randint(1, 2)):
            question, answer = text_question(rng)
            messages += [_user(question), _assistant(answer)]
        return {"images": [], "messages": messages}
    if form == "two_images":
        # Two shape scenes; the question names one of them, so the model must keep the images apart.
        (first, first_scene), (second, second_scene) = (render_image(rng, "shapes") for _ in range(2))
        which = rng.randrange(2)
        scene = (first_scene, second_scene)[which]
        question_type = rng.choice(["colour", "shape", "count"])
        question = f"Look at the {('first', 'second')[which]} image. {rng.choice(QUESTIONS[question_type])}"
        return {"images": [first, second], "messages": [_user(question, 2), _assistant(scene.answer(question_type))]}
    # The first question's type is drawn uniformly, so rare types (a single shape's position) are as frequent as
    # common ones, and the image is drawn to fit it.
    question_type = rng.choice(question_types(kinds))
    image, scene = render_for_question_type(rng, question_type)
    question, answer = _qa(rng, scene, question_type)
    messages = [_user(question, 1), _assistant(answer)]
    if form == "multi_turn":
        # Follow-up turns ask about the same image without repeating it: the image is kept from the first turn.
        for _ in range(rng.randint(1, 2)):
            question, answer = _qa(rng, scene)
            messages += [_user(question), _assistant(answer)]
    return {"images": [image], "messages": messages}


def test_example(seed: int, index: int, kinds=IMAGE_KINDS) -> dict:
    """A held-out question about an image of `kinds`; types cycle so every type gets the same number of examples."""
    rng = example_rng(seed, "test", index)
    types = question_types(kinds)
    question_type = types[index % len(types)]
    image, scene = render_for_question_type(rng, question_type)
    return {
        "image": image,
        "question": rng.choice(QUESTIONS[question_type]),
        "answer": scene.answer(question_type),
        "question_type": question_type,
    }


__all__ = [
    "ANSWERS",
    "COLOURS",
    "IMAGE_KINDS",
    "QUESTION_TYPES",
    "Scene",
    "caption_example",
    "check_image_kinds",
    "conversation_example",
    "corpus_document",
    "question_types",
    "render_image",
    "render_for_question_type",
    "test_example",
    "text_example",
]
