"""Model fitting: candidate retrievers (`training.retrieval`), offline evaluation
(`training.evaluation`), and, later, the LLM re-ranker. Pure logic; no Ray imports here."""
