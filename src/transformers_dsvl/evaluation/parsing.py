"""Answer extraction: from a generated answer to the thing a benchmark scores.

Every rule here follows what the standard harnesses do without an external judge, so that scores are comparable with
published numbers:

- multiple choice (MMBench, SEED-Bench, ScienceQA): VLMEvalKit's exact-matching extraction (`can_infer`): a single
  option letter standing alone in the answer, else a single option whose text appears in the answer;
- MMMU: the MMMU authors' parser as lmms-eval runs it (bracketed / bare / dotted letters, option text in longer
  answers, the last mention wins, a seeded random letter when nothing matches) and their open-answer parser;
- yes/no (POPE): VLMEvalKit's `YOrN_Extraction` (default) or LLaVA's POPE rule;
- VQA: the EvalAI answer normalisation of the official VQA evaluation;
- OCRBench: the benchmark's own substring rule.

The functions are written from the harnesses' documented behaviour; docs/evaluation.md lists the rules with examples.
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------------------------------
# Multiple choice (VLMEvalKit exact matching)
# ---------------------------------------------------------------------------------------------------------------------

# Answers VLMEvalKit treats as a refusal: they select no option (its "Z"), whatever letters they contain.
REFUSAL_PHRASES = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
# Characters turned into spaces before looking for a standalone letter: "(B)", "B.", "[B]", "**B**", "B:" all
# become the token "B".
_LETTER_DELIMITERS = ".()[],:;!*#{}"


@dataclass(frozen=True)
class ParsedChoice:
    """An extracted option letter (or None) and the rule that decided it, kept in the report for auditing."""

    letter: str | None
    rule: str  # "letter", "option_text", "refusal", "none_of_the_options", "unparsed"


def extract_option_letter(response: str, options: Mapping[str, str]) -> ParsedChoice:
    """The option a free-form answer selects, by VLMEvalKit's exact-matching rules (no LLM judge).

    1. An answer containing one of VLMEvalKit's refusal phrases selects nothing.
    2. Letter rule: after replacing `.()[],:;!*#{}` with spaces, the answer's whitespace tokens are compared with
       the option letters (case-sensitive). Exactly one option letter among the tokens -> that option.
       ("B", "(B)", "B. cat", "The answer is B." all give B; "A or B" gives nothing from this rule.)
    3. If no option letter is a token but a standalone "Z" is (VLMEvalKit's "none of the options"), nothing is
       selected and the text rule is skipped, as in VLMEvalKit.
    4. Option-text rule: otherwise, if exactly one option's text occurs in the answer (both lowercased), that option.
    5. Otherwise nothing: the item counts as wrong (VLMEvalKit's exact-matching mode gives "Z").

    Args:
        response: the model's answer.
        options: option letter -> option text, e.g. {"A": "cat", "B": "dog"}.
    """
    response = str(response)
    if any(phrase in response for phrase in REFUSAL_PHRASES):
        return ParsedChoice(None, "refusal")

    tokens = _letter_tokens(response)
    letters_found = [letter for letter in options if letter in tokens]
    if len(letters_found) == 1:
        return ParsedChoice(letters_found[0], "letter")
    if not letters_found and "Z" in tokens:
        return ParsedChoice(None, "none_of_the_options")

    lowered = response.lower()
    matching_texts = [letter for letter, text in options.items() if str(text).lower() in lowered]
    if len(matching_texts) == 1:
        return ParsedChoice(matching_texts[0], "option_text")
    return ParsedChoice(None, "unparsed")


def _letter_tokens(response: str) -> list[str]:
    for character in _LETTER_DELIMITERS:
        response = response.replace(character, " ")
    return response.split()


# ---------------------------------------------------------------------------------------------------------------------
# MMMU (the benchmark authors' parser, as lmms-eval runs it)
# ---------------------------------------------------------------------------------------------------------------------

_MMMU_EDGE_PUNCTUATION = (",", ".", "!", "?", ";", ":", "'")


def parse_mmmu_choice(response: str, options: Mapping[str, str], rng: random.Random) -> ParsedChoice:
    """The option letter of an MMMU multiple-choice answer, by the MMMU authors' rules.

    1. Strip `, . ! ? ; : '` from both ends (one character class after the other) and pad with a space each side.
    2. Candidates: every letter written as "(X)"; if none, every letter followed by a space ("X "); if none, every
       letter followed by a dot ("X."); if none and the answer has more than 5 words, every option whose text occurs
       in the answer (case-insensitive).
    3. One candidate -> it. Several -> the one mentioned last (by "(X)", " X " or option-text position; when no
       candidate is found at those positions, the first candidate). None -> a random letter from `rng`, which the
       caller seeds per item so a run is reproducible (the rule is the authors'; the seed is ours).

    Returns the letter (never None) and the rule ("bracket", "letter", "dotted_letter", "option_text", "random").
    """
    letters = list(options)
    for character in _MMMU_EDGE_PUNCTUATION:
        response = response.strip(character)
    padded = f" {response} "

    candidates = [letter for letter in letters if f"({letter})" in padded]
    rule = "bracket"
    if not candidates:
        candidates = [letter for letter in letters if f"{letter} " in padded]
        rule = "letter"
    if not candidates:
        candidates = [letter for letter in letters if f"{letter}." in padded]
        rule = "dotted_letter"
    if not candidates and len(padded.split()) > 5:
        candidates = [letter for letter in letters if str(options[letter]).lower() in padded.lower()]
        rule = "option_text"

    if not candidates:
        return ParsedChoice(rng.choice(letters), "random")
    if len(candidates) == 1:
        return ParsedChoice(candidates[0], rule)
    if rule == "bracket":
        positions = [padded.rfind(f"({letter})") for letter in candidates]
    elif rule == "option_text":
        positions = [padded.lower().rfind(str(options[letter]).lower()) for letter in candidates]
    else:
        positions = [padded.rfind(f" {letter} ") for letter in candidates]
    # max() keeps the first of equal positions, like numpy.argmax in the original.
    best = max(range(len(candidates)), key=lambda index: (positions[index], -index))
    return ParsedChoice(candidates[best], rule)


_NUMBER_WITH_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUMBER_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUMBER_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")
_OPEN_ANSWER_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL_TAILS = {":", ",", ".", "!", "?", ";", "'"}


def parse_mmmu_open(response: str) -> list[str | float]:
    """The candidate answers of an MMMU open question, by the MMMU authors' rules.

    The answer is lowercased and split into sentences (". " before a capital letter in the original casing is lost
    after lowercasing, so in practice: newlines). In each sentence the shortest tail after an indicator ("could be",
    "so", "is", "thus", "therefore", "final", "answer", "result"; and "=" in the last sentence) is a candidate; with no
    candidate the whole answer is one. Every number found in a candidate is added, and every candidate is
    normalised (`normalize_mmmu_answer`). Returns the distinct normalised candidates.
    """
    text = response.strip().strip(".").lower()
    sentences = re.split(r"\.\s(?=[A-Z])|\n", text)
    key_responses = []
    indicators = list(_OPEN_ANSWER_INDICATORS)
    for index, sentence in enumerate(sentences):
        if index == len(sentences) - 1:
            indicators.append("=")
        shortest = None
        for indicator in indicators:
            if indicator in sentence:
                tail = sentence.split(indicator)[-1].strip()
                if shortest is None or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL_TAILS:
            key_responses.append(shortest)
    if not key_responses:
        key_responses = [text]

    candidates: list[str] = list(key_responses)
    for key_response in key_responses:
        candidates.extend(extract_numbers(key_response))
    normalised: list[str | float] = []
    for candidate in candidates:
        for value in normalize_mmmu_answer(candidate):
            if value not in normalised:
                normalised.append(value)
    return normalised


def extract_numbers(text: str) -> list[str]:
    """Numbers written with thousands commas, in scientific notation, or plain, in that order (MMMU's rule)."""
    return (
        _NUMBER_WITH_COMMAS.findall(text) + _NUMBER_SCIENTIFIC.findall(text) + _NUMBER_SIMPLE.findall(text)
    )


def normalize_mmmu_answer(value: str) -> list[str | float]:
    """MMMU's normalisation: numbers become floats rounded to 2 decimals; other strings are lowercased, and a single
    character becomes [" x", "x "] so that it only matches as a word edge."""
    value = str(value).strip()
    try:
        return [round(float(value.replace(",", "")), 2)]
    except ValueError:
        pass
    value = value.lower()
    if len(value) == 1:
        return [" " + value, value + " "]
    return [value]


def mmmu_open_is_correct(references: str | Sequence[str], candidates: Sequence[str | float]) -> bool:
    """MMMU's open-question check: a numeric candidate must equal a normalised reference number; a string candidate
    is correct when a normalised string reference occurs inside it."""
    if isinstance(references, str):
        references = [references]
    normalised_references: list[str | float] = []
    for reference in references:
        normalised_references.extend(normalize_mmmu_answer(reference))
    for candidate in candidates:
        if isinstance(candidate, str):
            if any(isinstance(reference, str) and reference in candidate for reference in normalised_references):
                return True
        elif candidate in normalised_references:
            return True
    return False


def parse_answer_list(value) -> list[str]:
    """An MMMU/OCRBench-style answer field as a list of strings: a list, a string holding a Python list literal
    ("['1', '2']", as MMMU stores several accepted answers), or a single string."""
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value]
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return [text]
        if isinstance(parsed, (list, tuple)):
            return [str(item) for item in parsed]
    return [text]


# ---------------------------------------------------------------------------------------------------------------------
# Yes / no (POPE)
# ---------------------------------------------------------------------------------------------------------------------

YES_NO_RULES = ("vlmevalkit", "llava")


def extract_yes_no(response: str, rule: str = "vlmevalkit") -> str | None:
    """"yes", "no", or None (undecided) for a yes/no question.

    - "vlmevalkit" (default, VLMEvalKit's `YOrN_Extraction`): lowercase, VQA punctuation processing, split into
      words; "yes" without "no" -> yes, "no" without "yes" -> no, otherwise undecided (scored as wrong and as a
      "no" prediction for precision/recall, as VLMEvalKit does).
    - "llava" (LLaVA's POPE script): keep the text before the first ".", drop commas, split on spaces; any of the words
      "No", "no", "not" -> no, everything else (even an empty answer) -> yes.
    """
    if rule == "vlmevalkit":
        words = process_punctuation(response.lower()).split()
        has_yes, has_no = "yes" in words, "no" in words
        if has_yes and not has_no:
            return "yes"
        if has_no and not has_yes:
            return "no"
        return None
    if rule == "llava":
        first_sentence = response.split(".")[0] if "." in response else response
        words = first_sentence.replace(",", "").split(" ")
        return "no" if ("No" in words or "no" in words or "not" in words) else "yes"
    raise ValueError(f"Unknown yes/no rule {rule!r}; choose one of {', '.join(YES_NO_RULES)}.")


# ---------------------------------------------------------------------------------------------------------------------
# VQA answer normalisation (EvalAI / the official VQA evaluation)
# ---------------------------------------------------------------------------------------------------------------------

_VQA_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                    "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d)(,)+(?=\d)")
# The official pattern is written `(?!<=\d)(\.)(?!\d)`: its first group is a (never matching) lookahead, so in effect
# every "." not followed by a digit is removed; "3.5" keeps its point, "dog." loses it.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# The official contraction table: written-without-apostrophe -> with apostrophe.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}


def process_punctuation(text: str) -> str:
    """The VQA evaluation's punctuation step: each punctuation mark is deleted when it touches a space (or the text
    has a digit,digit group), else replaced by a space; then every "." not followed by a digit is removed."""
    output = text
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in _VQA_PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or has_digit_comma:
            output = output.replace(mark, "")
        else:
            output = output.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", output)


def process_digit_article(text: str) -> str:
    """The VQA evaluation's word step: lowercase, number words -> digits, drop articles, restore contractions."""
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(word)
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def normalize_vqa_answer(answer: str) -> str:
    """EvalAI's answer processor (lmms-eval applies it to predictions and references alike): lowercase, drop commas
    and "?", split "'s", whitespace to spaces, then `process_punctuation` and `process_digit_article`."""
    answer = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))


# ---------------------------------------------------------------------------------------------------------------------
# OCRBench
# ---------------------------------------------------------------------------------------------------------------------

OCRBENCH_FORMULA_DATASET = "HME100k"


def ocrbench_is_correct(response: str, references: Sequence[str], dataset_name: str) -> bool:
    """OCRBench's rule: an item is right when any reference occurs inside the answer.

    Handwritten formulas (dataset "HME100k") compare with all spaces and newlines removed, case-sensitive; every
    other item compares lowercased and stripped, with newlines turned into spaces.
    """
    if dataset_name == OCRBENCH_FORMULA_DATASET:
        prediction = response.strip().replace("\n", " ").replace(" ", "")
        return any(reference.strip().replace("\n", " ").replace(" ", "") in prediction for reference in references)
    prediction = response.lower().strip().replace("\n", " ")
    return any(reference.lower().strip().replace("\n", " ") in prediction for reference in references)


__all__ = [
    "REFUSAL_PHRASES",
    "YES_NO_RULES",
    "ParsedChoice",
    "extract_numbers",
    "extract_option_letter",
    "extract_yes_no",
    "mmmu_open_is_correct",
    "normalize_mmmu_answer",
    "normalize_vqa_answer",
    "ocrbench_is_correct",
    "parse_answer_list",
    "parse_mmmu_choice",
    "parse_mmmu_open",
    "process_digit_article",
    "process_punctuation",
]
