"""Exploratory data analysis of EvalMuse records: counts, label distributions, annotator agreement.

Each table has a pure function (records in, numbers out) and a drawing function (numbers in,
Figure out); ``report.write_report`` composes them into PNG plots, ``summary.md`` and ``summary.json``.
An element counts as positive when its mean vote is >= 0.5, the binarisation the ACC metric uses.
Figures are drawn on the Agg canvas directly (no pyplot state), so they render headless.
"""
from .charts import (barh_chart, category_share_chart, heatmap_chart, histogram_chart, spread_chart,
                     total_score_chart, total_vs_elements_chart)
from .report import md_table, summary_markdown, write_report
from .tables import (HIDDEN, annotator_total_spread, annotators_per_record, element_table, elements_per_record,
                     generator_category_rates, generator_totals, generator_weaknesses, images_per_prompt,
                     integer_histogram, overview_test_file, rates_by, total_vs_elements, value_counts_sorted)

__all__ = ["HIDDEN", "annotator_total_spread", "annotators_per_record", "barh_chart", "category_share_chart",
           "element_table", "elements_per_record", "generator_category_rates", "generator_totals",
           "generator_weaknesses", "heatmap_chart", "histogram_chart", "images_per_prompt", "integer_histogram",
           "md_table", "overview_test_file", "rates_by", "spread_chart", "summary_markdown", "total_score_chart",
           "total_vs_elements", "total_vs_elements_chart", "value_counts_sorted", "write_report"]
