"""The offline tiny world: a synthetic dialogue/toxicity corpus, a local tokenizer and small models.

Built deterministically from a seed so that the default experiment runs with nothing downloaded.
"""
