"""The evaluation report: `results.json` (everything, item by item) and `summary.md` (the tables to read).

The report holds no timestamps or durations, so a resumed run writes exactly the report of an uninterrupted one.
Fractions are stored as fractions in the JSON and shown as percentages in the Markdown.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"
SUMMARY_FILE = "summary.md"

# Metrics that are fractions (shown as percentages); everything else is a count or a score shown as is.
PERCENT_METRICS = {
    "accuracy", "precision", "recall", "f1", "yes_ratio", "circular_accuracy", "single_pass_accuracy",
    "mean_category_f1", "mean_category_accuracy",
}


def build_report(benchmark, run_config: dict, requests: Sequence, prompts: Sequence[str], answers: Sequence[str],
                 result, metric_backend: str, questions_in_file: int, limit: int | None) -> dict[str, Any]:
    items = []
    for request, prompt, answer, item in zip(requests, prompts, answers, result.items):
        items.append({**item, "prompt": prompt, "raw_answer": answer})
    return {
        "task": benchmark.name,
        "title": benchmark.title,
        "model": run_config["model"],
        "data": run_config["data"],
        "settings": run_config["settings"],
        "generation": run_config["generation"],
        "questions_in_file": questions_in_file,
        "questions_evaluated": len({request.sample.uid for request in requests}),
        "limit": limit,
        "metric_backend": metric_backend,
        "headline": {"metric": benchmark.headline_metric, "value": result.metrics.get(benchmark.headline_metric)},
        "metrics": result.metrics,
        "breakdowns": result.breakdowns,
        "items": items,
    }


def format_value(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name in PERCENT_METRICS and isinstance(value, (int, float)):
        return f"{100 * value:.2f}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# {report['title']} results", ""]
    lines += [
        f"- model: `{report['model']}`",
        f"- data: `{report['data']}`",
        f"- questions: {report['questions_evaluated']} of {report['questions_in_file']}"
        + (f" (limited to the first {report['limit']})" if report["limit"] else ""),
        f"- generation: greedy, max_new_tokens={report['generation']['max_new_tokens']}",
        f"- settings: {json.dumps(report['settings'], sort_keys=True)}",
        f"- metrics computed by: {report['metric_backend']}",
        "",
        "Percentages for accuracy-like metrics; counts as numbers.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    headline = report["headline"]["metric"]
    for name, value in report["metrics"].items():
        label = f"**{name}**" if name == headline else name
        lines.append(f"| {label} | {format_value(name, value)} |")
    for breakdown_name, categories in report["breakdowns"].items():
        if not categories:
            continue
        columns = list(next(iter(categories.values())))
        lines += ["", f"## By {breakdown_name}", "", "| " + " | ".join([breakdown_name, *columns]) + " |",
                  "|" + "---|" * (len(columns) + 1)]
        for category, scores in categories.items():
            lines.append("| " + " | ".join([category, *(format_value(c, scores.get(c)) for c in columns)]) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], output_dir: str | Path) -> tuple[Path, Path]:
    output_dir = Path(output_dir)
    results_path = output_dir / RESULTS_FILE
    summary_path = output_dir / SUMMARY_FILE
    results_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    summary_path.write_text(render_markdown(report), encoding="utf-8")
    return results_path, summary_path


__all__ = ["RESULTS_FILE", "SUMMARY_FILE", "build_report", "format_value", "render_markdown", "write_report"]
