"""Evaluating models: verification sets (`evaluation.sets`), reports (`evaluation.reports`), and the
official layouts of benchmarks (`evaluation.protocols`). The metrics live in `verification` and
`identification`; the command is eval.py. See ARCHITECTURE.md.

The names below are re-exported so that `from evaluation import evaluate_valset` keeps working.
"""
from evaluation.reports import COLUMNS, TABLE_FAR, csv_table, markdown_table, table_rows, write_reports
from evaluation.sets import (FRONTAL_YAW, PROFILE_YAW, SetResult, ValSet, available_valsets, evaluate_set,
                             evaluate_valset, pose_strata, resolve_valsets)

__all__ = ["COLUMNS", "TABLE_FAR", "csv_table", "markdown_table", "table_rows", "write_reports", "FRONTAL_YAW",
           "PROFILE_YAW", "SetResult", "ValSet", "available_valsets", "evaluate_set", "evaluate_valset", "pose_strata",
           "resolve_valsets"]
