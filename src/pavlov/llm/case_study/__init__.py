"""The positive-movie-review case study: SFT -> reward model -> online RL on Rotten Tomatoes
(:mod:`.pipeline`), its steps (:mod:`.steps`) and its report (:mod:`.report`)."""
