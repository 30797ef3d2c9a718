"""The factory's dataset as training reads it: the TFDS ArrayRecord splits (loader.py `load_examples`) and the
resumable grain prompt iterator over them (loader.py `make_prompt_iterator`). No TensorFlow.
"""
