"""The pipeline's domain: facts, MEMORY, persona sections, transcripts and the rules.

Plain data and pure functions, shared by the stages, the model providers and
the tests; nothing here knows SQL, HTTP or the queue.
"""
