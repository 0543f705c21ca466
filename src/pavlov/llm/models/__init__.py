"""Models: loading causal LMs and encoders (local directories, the embedded GGUF wheels), padding,
LoRA and saving (:mod:`.loading`), the offline assets the wheels ship (:mod:`.assets`), and tiny
random models for tests (:mod:`.tiny`)."""
