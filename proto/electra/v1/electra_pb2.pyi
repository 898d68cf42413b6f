from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassifyInput(_message.Message):
    __slots__ = ("text", "text_pair")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TEXT_PAIR_FIELD_NUMBER: _ClassVar[int]
    text: str
    text_pair: str
    def __init__(self, text: _Optional[str] = ..., text_pair: _Optional[str] = ...) -> None: ...

class ClassifyParameters(_message.Message):
    __slots__ = ("top_k", "function_to_apply", "truncate")
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_TO_APPLY_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    top_k: int
    function_to_apply: str
    truncate: bool
    def __init__(self, top_k: _Optional[int] = ..., function_to_apply: _Optional[str] = ..., truncate: _Optional[bool] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "inputs", "parameters", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[ClassifyInput]
    parameters: ClassifyParameters
    model_version: str
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[ClassifyInput, _Mapping]]] = ..., parameters: _Optional[_Union[ClassifyParameters, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class ClassifyResult(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[LabelScore]
    def __init__(self, labels: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("model", "results", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    results: _containers.RepeatedCompositeFieldContainer[ClassifyResult]
    model_version: str
    def __init__(self, model: _Optional[str] = ..., results: _Optional[_Iterable[_Union[ClassifyResult, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class QaInput(_message.Message):
    __slots__ = ("question", "context")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    question: str
    context: str
    def __init__(self, question: _Optional[str] = ..., context: _Optional[str] = ...) -> None: ...

class QaParameters(_message.Message):
    __slots__ = ("top_k", "doc_stride", "max_answer_len", "max_seq_len", "max_question_len", "handle_impossible_answer", "align_to_words", "null_score_diff_threshold")
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    DOC_STRIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_ANSWER_LEN_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    MAX_QUESTION_LEN_FIELD_NUMBER: _ClassVar[int]
    HANDLE_IMPOSSIBLE_ANSWER_FIELD_NUMBER: _ClassVar[int]
    ALIGN_TO_WORDS_FIELD_NUMBER: _ClassVar[int]
    NULL_SCORE_DIFF_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    top_k: int
    doc_stride: int
    max_answer_len: int
    max_seq_len: int
    max_question_len: int
    handle_impossible_answer: bool
    align_to_words: bool
    null_score_diff_threshold: float
    def __init__(self, top_k: _Optional[int] = ..., doc_stride: _Optional[int] = ..., max_answer_len: _Optional[int] = ..., max_seq_len: _Optional[int] = ..., max_question_len: _Optional[int] = ..., handle_impossible_answer: _Optional[bool] = ..., align_to_words: _Optional[bool] = ..., null_score_diff_threshold: _Optional[float] = ...) -> None: ...

class AnswerQuestionRequest(_message.Message):
    __slots__ = ("model", "inputs", "parameters", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[QaInput]
    parameters: QaParameters
    model_version: str
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[QaInput, _Mapping]]] = ..., parameters: _Optional[_Union[QaParameters, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class Answer(_message.Message):
    __slots__ = ("score", "start", "end", "answer")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    score: float
    start: int
    end: int
    answer: str
    def __init__(self, score: _Optional[float] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., answer: _Optional[str] = ...) -> None: ...

class QaResult(_message.Message):
    __slots__ = ("answers",)
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[Answer]
    def __init__(self, answers: _Optional[_Iterable[_Union[Answer, _Mapping]]] = ...) -> None: ...

class AnswerQuestionResponse(_message.Message):
    __slots__ = ("model", "results", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    results: _containers.RepeatedCompositeFieldContainer[QaResult]
    model_version: str
    def __init__(self, model: _Optional[str] = ..., results: _Optional[_Iterable[_Union[QaResult, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class LabelList(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, labels: _Optional[_Iterable[str]] = ...) -> None: ...

class TagParameters(_message.Message):
    __slots__ = ("aggregation_strategy", "ignore_labels", "stride")
    AGGREGATION_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    IGNORE_LABELS_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    aggregation_strategy: str
    ignore_labels: LabelList
    stride: int
    def __init__(self, aggregation_strategy: _Optional[str] = ..., ignore_labels: _Optional[_Union[LabelList, _Mapping]] = ..., stride: _Optional[int] = ...) -> None: ...

class TagRequest(_message.Message):
    __slots__ = ("model", "inputs", "parameters", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    parameters: TagParameters
    model_version: str
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., parameters: _Optional[_Union[TagParameters, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class Entity(_message.Message):
    __slots__ = ("label", "score", "word", "start", "end", "index")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    WORD_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    word: str
    start: int
    end: int
    index: int
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., word: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class TagResult(_message.Message):
    __slots__ = ("entities",)
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    def __init__(self, entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ...) -> None: ...

class TagResponse(_message.Message):
    __slots__ = ("model", "results", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    results: _containers.RepeatedCompositeFieldContainer[TagResult]
    model_version: str
    def __init__(self, model: _Optional[str] = ..., results: _Optional[_Iterable[_Union[TagResult, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class DiscriminateParameters(_message.Message):
    __slots__ = ("threshold",)
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    def __init__(self, threshold: _Optional[float] = ...) -> None: ...

class DiscriminateRequest(_message.Message):
    __slots__ = ("model", "inputs", "parameters", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    parameters: DiscriminateParameters
    model_version: str
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., parameters: _Optional[_Union[DiscriminateParameters, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class TokenScore(_message.Message):
    __slots__ = ("token", "start", "end", "score", "replaced")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    token: str
    start: int
    end: int
    score: float
    replaced: bool
    def __init__(self, token: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., score: _Optional[float] = ..., replaced: _Optional[bool] = ...) -> None: ...

class DiscriminateResult(_message.Message):
    __slots__ = ("tokens", "words", "replaced_rate")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    REPLACED_RATE_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenScore]
    words: _containers.RepeatedCompositeFieldContainer[TokenScore]
    replaced_rate: float
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenScore, _Mapping]]] = ..., words: _Optional[_Iterable[_Union[TokenScore, _Mapping]]] = ..., replaced_rate: _Optional[float] = ...) -> None: ...

class DiscriminateResponse(_message.Message):
    __slots__ = ("model", "results", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    results: _containers.RepeatedCompositeFieldContainer[DiscriminateResult]
    model_version: str
    def __init__(self, model: _Optional[str] = ..., results: _Optional[_Iterable[_Union[DiscriminateResult, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class RerankParameters(_message.Message):
    __slots__ = ("truncate", "truncation_direction", "aggregation", "stride", "max_tokens_per_doc")
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_DIRECTION_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_PER_DOC_FIELD_NUMBER: _ClassVar[int]
    truncate: bool
    truncation_direction: str
    aggregation: str
    stride: int
    max_tokens_per_doc: int
    def __init__(self, truncate: _Optional[bool] = ..., truncation_direction: _Optional[str] = ..., aggregation: _Optional[str] = ..., stride: _Optional[int] = ..., max_tokens_per_doc: _Optional[int] = ...) -> None: ...

class RerankRequest(_message.Message):
    __slots__ = ("model", "query", "documents", "top_n", "parameters", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    query: str
    documents: _containers.RepeatedScalarFieldContainer[str]
    top_n: int
    parameters: RerankParameters
    model_version: str
    def __init__(self, model: _Optional[str] = ..., query: _Optional[str] = ..., documents: _Optional[_Iterable[str]] = ..., top_n: _Optional[int] = ..., parameters: _Optional[_Union[RerankParameters, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class RankedDocument(_message.Message):
    __slots__ = ("index", "score", "raw_score", "windows")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RAW_SCORE_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    index: int
    score: float
    raw_score: float
    windows: int
    def __init__(self, index: _Optional[int] = ..., score: _Optional[float] = ..., raw_score: _Optional[float] = ..., windows: _Optional[int] = ...) -> None: ...

class RerankResponse(_message.Message):
    __slots__ = ("model", "results", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    results: _containers.RepeatedCompositeFieldContainer[RankedDocument]
    model_version: str
    def __init__(self, model: _Optional[str] = ..., results: _Optional[_Iterable[_Union[RankedDocument, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("id", "classify", "answer_question", "tag", "discriminate", "rerank")
    ID_FIELD_NUMBER: _ClassVar[int]
    CLASSIFY_FIELD_NUMBER: _ClassVar[int]
    ANSWER_QUESTION_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    DISCRIMINATE_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    id: str
    classify: ClassifyRequest
    answer_question: AnswerQuestionRequest
    tag: TagRequest
    discriminate: DiscriminateRequest
    rerank: RerankRequest
    def __init__(self, id: _Optional[str] = ..., classify: _Optional[_Union[ClassifyRequest, _Mapping]] = ..., answer_question: _Optional[_Union[AnswerQuestionRequest, _Mapping]] = ..., tag: _Optional[_Union[TagRequest, _Mapping]] = ..., discriminate: _Optional[_Union[DiscriminateRequest, _Mapping]] = ..., rerank: _Optional[_Union[RerankRequest, _Mapping]] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("total_ms", "tokenization_ms", "queue_ms", "inference_ms")
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZATION_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    total_ms: float
    tokenization_ms: float
    queue_ms: float
    inference_ms: float
    def __init__(self, total_ms: _Optional[float] = ..., tokenization_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("code", "message", "retry_after_s")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    retry_after_s: float
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., retry_after_s: _Optional[float] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("id", "status", "classify", "answer_question", "tag", "discriminate", "rerank", "timings")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CLASSIFY_FIELD_NUMBER: _ClassVar[int]
    ANSWER_QUESTION_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    DISCRIMINATE_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: Status
    classify: ClassifyResponse
    answer_question: AnswerQuestionResponse
    tag: TagResponse
    discriminate: DiscriminateResponse
    rerank: RerankResponse
    timings: Timings
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., classify: _Optional[_Union[ClassifyResponse, _Mapping]] = ..., answer_question: _Optional[_Union[AnswerQuestionResponse, _Mapping]] = ..., tag: _Optional[_Union[TagResponse, _Mapping]] = ..., discriminate: _Optional[_Union[DiscriminateResponse, _Mapping]] = ..., rerank: _Optional[_Union[RerankResponse, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ...) -> None: ...
