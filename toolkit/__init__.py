"""medrae toolkit: pipelines, image IO, models at run time, metrics and reports."""
