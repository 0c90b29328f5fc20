"""On-demand (request-time) features: DuckDB expressions over request columns
and stored features, compiled to numpy for serving (`compiler`)."""
