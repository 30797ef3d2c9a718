"""Evaluation: execution accuracy of predictions or of a policy's greedy agent on Spider/BIRD-format data
(evaluate.py `evaluate_predictions`, `evaluate_checkpoint`; `agro-sql eval`), and the run report with plots
(report.py `write_report`; `agro-sql report`).
"""
