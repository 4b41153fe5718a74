"""Example pipelines shipped with streamjob."""
