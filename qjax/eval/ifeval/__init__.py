"""IFEval (Zhou et al., 2023): verifiable instructions and strict/loose accuracy."""

from qjax.eval.ifeval.evaluate import (IFEvalExample, follow_instructions, load_examples,
                                       loose_variants, parse_example, score_responses)
from qjax.eval.ifeval.instructions import (INSTRUCTIONS, Instruction, InstructionError,
                                           check_instruction, instruction_arguments)

__all__ = ["IFEvalExample", "follow_instructions", "load_examples", "loose_variants", "parse_example",
           "score_responses", "INSTRUCTIONS", "Instruction", "InstructionError", "check_instruction",
           "instruction_arguments"]
