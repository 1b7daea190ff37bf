"""Reading the feedback aggregates (`feedback-stats`): the series, its table and its chart."""
