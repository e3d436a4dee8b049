"""The OpenAI API's responses as pydantic models (what ``openai_api`` renders; vLLM's ``protocol.py`` types
the same): completions and chat completions, their stream chunks, usage, errors and the model list.
:meth:`OpenAIModel.render` is the JSON object a client sees: fields that OpenAI leaves out when they do not
apply are left out (``Omitted``), every other unset field is written as ``null``."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field

Number = Union[float, str]  # a float, or protobuf's JSON spelling of a non-finite one ("NaN", "Infinity")
T = TypeVar("T")
Omitted = Annotated[Optional[T], Field(exclude_if=lambda v: v is None)]  # left out of the JSON when None


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def render(self) -> dict[str, Any]:
        return self.model_dump()


class ErrorInfo(OpenAIModel):
    message: str
    type: str
    param: Optional[str]
    code: str


class ErrorResponse(OpenAIModel):
    error: ErrorInfo


class ModelCard(OpenAIModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "cascade"


class ModelList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class UsageInfo(OpenAIModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(OpenAIModel):
    token: str
    logprob: Number
    bytes: list[int]


class ChatTokenLogprob(OpenAIModel):
    token: str
    logprob: Number
    bytes: list[int]
    top_logprobs: Omitted[list[TopLogprob]] = None


class ChatLogprobs(OpenAIModel):
    content: list[ChatTokenLogprob]


class CompletionLogprobs(OpenAIModel):
    tokens: list[str]
    token_logprobs: list[Optional[float]]  # None: the prompt's first token (nothing before it to score it)
    top_logprobs: list[Optional[dict[str, float]]]
    text_offset: list[int]


class ChatMessage(OpenAIModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(OpenAIModel):
    index: int
    message: ChatMessage
    logprobs: Optional[ChatLogprobs]
    finish_reason: str


class CompletionChoice(OpenAIModel):
    """A choice of a completion, unary or streamed (``finish_reason`` None until its last chunk)."""

    index: int
    text: str
    logprobs: Optional[CompletionLogprobs]
    finish_reason: Optional[str]


class DeltaMessage(OpenAIModel):
    role: Omitted[Literal["assistant"]] = None
    content: Omitted[str] = None


class ChatChunkChoice(OpenAIModel):
    index: int
    delta: DeltaMessage
    logprobs: Optional[ChatLogprobs]
    finish_reason: Optional[str]


class _Response(OpenAIModel):
    id: str
    created: int
    model: str


class ChatCompletionResponse(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: UsageInfo
    cascade: dict[str, Any]  # the answer's cascade fields (``openai_api.cascade_info``)


class CompletionResponse(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: UsageInfo
    cascade: dict[str, Any]


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Omitted[UsageInfo] = None
    cascade: Omitted[dict[str, Any]] = None


class CompletionChunk(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Omitted[UsageInfo] = None
    cascade: Omitted[dict[str, Any]] = None
