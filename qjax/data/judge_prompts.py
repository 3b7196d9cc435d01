"""FastChat's MT-Bench judge prompts (lm-sys/FastChat `fastchat/llm_judge/data/judge_prompts.jsonl`,
Apache-2.0): name -> (system prompt, user prompt template). Single-answer grading asks for
"[[rating]]" (1-10); pairwise comparison for "[[A]]", "[[B]]" or "[[C]]" (tie). The "math" prompts
carry reference answers and are used for the categories in NEED_REF_CATEGORIES.
"""

from __future__ import annotations

NEED_REF_CATEGORIES = ("math", "reasoning", "coding")

_RATING = ("After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly "
           "following this format: \"[[rating]]\", for example: \"Rating: [[5]]\".")
_VERDICT = ("Avoid any positional biases and ensure that the order in which the responses were presented does "
            "not influence your decision. Do not allow the length of the responses to influence your "
            "evaluation. Do not favor certain names of the assistants. Be as objective as possible. After "
            "providing your explanation, output your final verdict by strictly following this format: "
            "\"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie.")


def _conversation(who: str, a1: str, a2: str) -> str:
    return (f"<|The Start of Assistant {who}'s Conversation with User|>\n\n### User:\n{{question_1}}\n\n"
            f"### Assistant {who}:\n{{{a1}}}\n\n### User:\n{{question_2}}\n\n### Assistant {who}:\n{{{a2}}}\n\n"
            f"<|The End of Assistant {who}'s Conversation with User|>")


_REFERENCE_CONVERSATION = ("<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n### Reference answer:\n"
                           "{ref_answer_1}\n\n### User:\n{question_2}\n\n### Reference answer:\n{ref_answer_2}\n\n"
                           "<|The End of Reference Answer|>")

PROMPTS: dict[str, tuple[str, str]] = {
    "single-v1": (
        "You are a helpful assistant.",
        "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an "
        "AI assistant to the user question displayed below. Your evaluation should consider factors such as the "
        "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your "
        "evaluation by providing a short explanation. Be as objective as possible. " + _RATING + "\n\n"
        "[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"),
    "single-math-v1": (
        "You are a helpful assistant.",
        "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an "
        "AI assistant to the user question displayed below. Your evaluation should consider correctness and "
        "helpfulness. You will be given a reference answer and the assistant's answer. Begin your evaluation by "
        "comparing the assistant's answer with the reference answer. Identify and correct any mistakes. Be as "
        "objective as possible. " + _RATING + "\n\n[Question]\n{question}\n\n[The Start of Reference Answer]\n"
        "{ref_answer_1}\n[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\n{answer}\n"
        "[The End of Assistant's Answer]"),
    "single-v1-multi-turn": (
        "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to "
        "the user question displayed below. Your evaluation should consider factors such as the helpfulness, "
        "relevance, accuracy, depth, creativity, and level of detail of the response. You evaluation should focus "
        "on the assistant's answer to the second user question. Begin your evaluation by providing a short "
        "explanation. Be as objective as possible. " + _RATING + "\n\n",
        _conversation("A", "answer_1", "answer_2")),
    "single-math-v1-multi-turn": (
        "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to "
        "the user question. Your evaluation should consider correctness and helpfulness. You will be given a "
        "reference answer and the assistant's answer. You evaluation should focus on the assistant's answer to "
        "the second question. Begin your evaluation by comparing the assistant's answer with the reference "
        "answer. Identify and correct any mistakes. Be as objective as possible. " + _RATING + "\n\n",
        _REFERENCE_CONVERSATION + "\n\n\n" + _conversation("A", "answer_1", "answer_2")),
    "pair-v2": (
        "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
        "to the user question displayed below. You should choose the assistant that follows the user's "
        "instructions and answers the user's question better. Your evaluation should consider factors such as the "
        "helpfulness, relevance, accuracy, depth, creativity, and level of detail of their responses. Begin your "
        "evaluation by comparing the two responses and provide a short explanation. " + _VERDICT,
        "[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant "
        "A's Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"),
    "pair-v2-multi-turn": (
        "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
        "to the user questions. You should choose the assistant that follows the user's instructions and answers "
        "the user's questions better. Your evaluation should consider factors such as the helpfulness, relevance, "
        "accuracy, depth, creativity, and level of detail of their responses. You should focus on who provides a "
        "better answer to the second user question. Begin your evaluation by comparing the responses of the two "
        "assistants and provide a short explanation. " + _VERDICT,
        _conversation("A", "answer_a_1", "answer_a_2") + "\n\n\n" + _conversation("B", "answer_b_1", "answer_b_2")),
    "pair-math-v1": (
        "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
        "to the user question displayed below. Your evaluation should consider correctness and helpfulness. You "
        "will be given a reference answer, assistant A's answer, and assistant B's answer. Your job is to evaluate "
        "which assistant's answer is better. Begin your evaluation by comparing both assistants' answers with the "
        "reference answer. Identify and correct any mistakes. " + _VERDICT,
        "[User Question]\n{question}\n\n[The Start of Reference Answer]\n{ref_answer_1}\n[The End of Reference "
        "Answer]\n\n[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
        "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"),
    "pair-math-v1-multi-turn": (
        "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
        "to the user questions. Your evaluation should consider correctness and helpfulness. You will be given "
        "reference answers, the assistant A's answers, the assistant B's answers. Your job is to determine which "
        "assistant provides correct and helpful answers to the second user question. Begin your evaluation by "
        "comparing both assistants' answers with the reference answers. Identify and correct any mistakes. "
        + _VERDICT,
        _REFERENCE_CONVERSATION + "\n\n\n" + _conversation("A", "answer_a_1", "answer_a_2") + "\n\n\n"
        + _conversation("B", "answer_b_1", "answer_b_2")),
}
