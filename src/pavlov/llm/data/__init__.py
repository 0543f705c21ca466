"""Data: prompt, SFT and preference datasets with validation and tokenization
(:mod:`.datasets`), and the Rotten Tomatoes critic snippets (:mod:`.rt`)."""
