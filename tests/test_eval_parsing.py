"""Answer extraction on hand-written answers, one case per rule and fallback of the harnesses' parsers."""

from __future__ import annotations

import random

import pytest

from transformers_dsvl.evaluation.parsing import (
    extract_numbers,
    extract_option_letter,
    extract_yes_no,
    mmmu_open_is_correct,
    normalize_vqa_answer,
    ocrbench_is_correct,
    parse_answer_list,
    parse_mmmu_choice,
    parse_mmmu_open,
    process_punctuation,
)

OPTIONS = {"A": "cat", "B": "dog", "C": "red bird", "D": "fish"}


# ---------------------------------------------------------------------------------------------------------------------
# VLMEvalKit multiple choice
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer, letter, rule",
    [
        ("B", "B", "letter"),
        ("(B)", "B", "letter"),
        ("B.", "B", "letter"),
        ("B. dog", "B", "letter"),
        ("[B]", "B", "letter"),
        ("**B**", "B", "letter"),
        ("Answer: B", "B", "letter"),
        ("The answer is B.", "B", "letter"),
        ("{B}", "B", "letter"),
        # VLMEvalKit's default keeps an article-like capital "A" as a letter.
        ("A cat sits on the mat", "A", "letter"),
        # Letters are case-sensitive: "b" is not an option letter, so the option text decides.
        ("b, the dog", "B", "option_text"),
        ("It is a dog.", "B", "option_text"),
        ("The RED BIRD on the branch", "C", "option_text"),
        # Two letters: the letter rule fails; the option text cannot decide either.
        ("A or B", None, "unparsed"),
        # Two letters, one option text: the text rule decides.
        ("Not A, B: a dog", "B", "option_text"),
        # Two option texts and no letter.
        ("a cat chasing a dog", None, "unparsed"),
        ("", None, "unparsed"),
        ("I do not know", None, "unparsed"),
        # A standalone Z is VLMEvalKit's "none of the options": no text matching afterwards.
        ("Z", None, "none_of_the_options"),
        ("Z - there is no dog", None, "none_of_the_options"),
        # Refusals select nothing even when they contain a letter or option text.
        ("Cannot determine the answer, maybe B (dog)", None, "refusal"),
    ],
)
def test_extract_option_letter(answer, letter, rule):
    parsed = extract_option_letter(answer, OPTIONS)
    assert (parsed.letter, parsed.rule) == (letter, rule)


def test_extract_option_letter_only_considers_the_question_options():
    # "C" is a token but not an option of a two-option question; "A" decides.
    assert extract_option_letter("A (not C)", {"A": "yes", "B": "no"}).letter == "A"
    assert extract_option_letter("C", {"A": "yes", "B": "no"}).rule == "unparsed"


# ---------------------------------------------------------------------------------------------------------------------
# MMMU multiple choice
# ---------------------------------------------------------------------------------------------------------------------
MMMU_OPTIONS = {"A": "green pear", "B": "red apple", "C": "yellow banana", "D": "purple plum"}


@pytest.mark.parametrize(
    "answer, letter, rule",
    [
        ("(B)", "B", "bracket"),
        ("The answer is (C) yellow banana.", "C", "bracket"),
        # Several bracketed letters: the last one mentioned.
        ("(A) is wrong, so (D) it is", "D", "bracket"),
        ("B", "B", "letter"),  # padded to " B ": "B " matches
        ("C.", "C", "letter"),  # edge punctuation stripped first
        ("Between A and C, C", "C", "letter"),  # several: the last " X "
        ("option C.5 of the list", "C", "dotted_letter"),  # "C." without "C "
        # No letter, more than 5 words: option text; several texts: the last one.
        ("I believe the correct fruit is the red apple here", "B", "option_text"),
        ("not the green pear but rather the purple plum", "D", "option_text"),
    ],
)
def test_parse_mmmu_choice(answer, letter, rule):
    parsed = parse_mmmu_choice(answer, MMMU_OPTIONS, random.Random(0))
    assert (parsed.letter, parsed.rule) == (letter, rule)


def test_parse_mmmu_choice_short_answer_without_letter_is_a_seeded_random_letter():
    # 5 words or fewer: the option-text rule does not apply even though "red apple" occurs.
    first = parse_mmmu_choice("the red apple", MMMU_OPTIONS, random.Random("0:validation_Art_1"))
    again = parse_mmmu_choice("the red apple", MMMU_OPTIONS, random.Random("0:validation_Art_1"))
    assert first.rule == "random" and first.letter in MMMU_OPTIONS and first == again
    letters = {parse_mmmu_choice("no idea", MMMU_OPTIONS, random.Random(f"0:item{i}")).letter for i in range(40)}
    assert letters == set(MMMU_OPTIONS)  # the fallback really draws among all options


# ---------------------------------------------------------------------------------------------------------------------
# MMMU open questions
# ---------------------------------------------------------------------------------------------------------------------
def test_extract_numbers_forms():
    # The three MMMU patterns in their order; the plain pattern also picks pieces of the other forms ("234" of
    # "1,234", "2" and "3" of "2.5e3"), exactly as in the MMMU evaluation.
    assert extract_numbers("1,234 and 2.5e3 and -7 and 0.5") == ["1,234", "2.5e3", "234", "2", "3", "-7", "0.5"]


@pytest.mark.parametrize(
    "answer, references, correct",
    [
        ("The answer is 42.", "42", True),
        ("The area is 12 square meters", "12", True),
        ("x = 3.5", "3.50", True),  # numbers compared as floats rounded to 2 decimals
        ("There are 1,000 apples", "1000", True),
        ("Therefore, the speed is 12 m/s", "12", True),
        ("The capital is Paris", "Paris", True),  # string reference inside the key response
        ("It is 13", "12", False),
        ("The answer is london", "Paris", False),
        ("The answer is 7", ["6", "7"], True),  # several accepted answers
    ],
)
def test_mmmu_open(answer, references, correct):
    assert mmmu_open_is_correct(references, parse_mmmu_open(answer)) is correct


def test_mmmu_open_candidates_are_key_tails_and_numbers():
    assert parse_mmmu_open("First we add.\nSo the result is 15 cm") == ["15 cm", 15.0]
    # No indicator at all: the whole (lowercased) answer.
    assert parse_mmmu_open("Blue Whale") == ["blue whale"]


def test_parse_answer_list():
    assert parse_answer_list("['24/7', '3.429']") == ["24/7", "3.429"]
    assert parse_answer_list(["a", 1]) == ["a", "1"]
    assert parse_answer_list("plain") == ["plain"]
    assert parse_answer_list("[not a list") == ["[not a list"]


# ---------------------------------------------------------------------------------------------------------------------
# Yes / no
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer, vlmevalkit, llava",
    [
        ("Yes", "yes", "yes"),
        ("yes.", "yes", "yes"),
        ("Yes, there is a dog in the image.", "yes", "yes"),
        ("No", "no", "no"),
        ("No, there is no car.", "no", "no"),
        ("There is not a car in the image.", None, "no"),  # "not" is LLaVA's negation, not VLMEvalKit's
        ("Yes, there is no doubt.", None, "no"),  # both words: undecided for VLMEvalKit; LLaVA sees "no"
        ("I cannot tell", None, "yes"),  # LLaVA: everything without a negation is yes
        ("Yes. No.", None, "yes"),  # LLaVA only reads the first sentence
    ],
)
def test_extract_yes_no(answer, vlmevalkit, llava):
    assert extract_yes_no(answer, "vlmevalkit") == vlmevalkit
    assert extract_yes_no(answer, "llava") == llava


def test_extract_yes_no_unknown_rule():
    with pytest.raises(ValueError, match="vlmevalkit, llava"):
        extract_yes_no("yes", "strict")


# ---------------------------------------------------------------------------------------------------------------------
# VQA normalisation
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer, normalised",
    [
        ("Two dogs.", "2 dogs"),
        ("The cat's toy", "cat 's toy"),
        ("dont know", "don't know"),
        ("3.5", "3.5"),  # a point before a digit stays
        ("hello-world", "hello world"),  # punctuation not touching a space becomes a space
        ("yes , sir", "yes sir"),  # commas go first
        ("black & white", "black & white"),
        ("an apple\nand a pear", "apple and pear"),
        ("Ten", "10"),
    ],
)
def test_normalize_vqa_answer(answer, normalised):
    assert normalize_vqa_answer(answer) == normalised


def test_process_punctuation_deletes_marks_next_to_spaces():
    assert process_punctuation("what? yes") == "what yes"  # "? " -> deleted
    assert process_punctuation("a/b") == "a b"  # no space around -> replaced by a space


# ---------------------------------------------------------------------------------------------------------------------
# OCRBench
# ---------------------------------------------------------------------------------------------------------------------
def test_ocrbench_rules():
    assert ocrbench_is_correct("The text says CHALLENGER here", ["challenger"], "IIIT5K")
    assert ocrbench_is_correct("march 3, 2001", ["3 March", "March 3"], "docVQA")  # any reference
    assert not ocrbench_is_correct("March", ["March 3"], "docVQA")
    # Formulas: spaces and newlines removed, case kept.
    assert ocrbench_is_correct("$x^{2}$", ["x ^ { 2 }"], "HME100k")
    assert ocrbench_is_correct("x ^\n{ 2 }", ["x^{2}"], "HME100k")
    assert not ocrbench_is_correct("X^{2}", ["x ^ { 2 }"], "HME100k")
