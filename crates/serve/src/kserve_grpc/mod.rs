//! KServe V2 / Open Inference Protocol over gRPC (`inference.GRPCInferenceService`),
//! on its own port (`hangar serve --grpc-port`): health, metadata, `ModelInfer` and the
//! streaming `ModelStreamInfer` that Triton's clients use for decoupled models.
//!
//! A thin adapter like the HTTP side (`crate::kserve`): messages are decoded by
//! `tensors`, the infer itself is `kserve::text_infer`, auth is `auth::identify`, errors
//! are `ApiError`s mapped to gRPC codes here. No sampling or tokenizing logic here.

mod tensors;

/// Messages and the server trait generated from `proto/grpc_predict_v2.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");
}

use crate::error::ApiError;
use crate::gen::{self, merge};
use crate::kserve::model_version;
use crate::kserve::text_infer::{self, usage_parameters, TextInfer, MODEL_VERSION};
use crate::{AppState, InferenceState};
use futures_util::{Stream, StreamExt};
use hangar_engine::TokenEvent;
use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use pb::model_metadata_response::TensorMetadata;
use pb::*;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status, Streaming};

/// The request parameter with which Triton's clients ask for an empty last response
/// carrying `triton_final_response: true` (how they learn a decoupled stream ended).
const EMPTY_FINAL: &str = "triton_enable_empty_final_response";
const FINAL: &str = "triton_final_response";

/// An `ApiError` as a gRPC status: the HTTP status chooses the code, the message stays.
pub fn status(e: ApiError) -> Status {
    let code = match e.status.as_u16() {
        400 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        408 => Code::DeadlineExceeded,
        409 => Code::AlreadyExists,
        413 | 429 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        s if (400..500).contains(&s) => Code::FailedPrecondition,
        _ => Code::Internal,
    };
    Status::new(code, e.message)
}

/// The gRPC service over the server's shared state.
#[derive(Clone)]
pub struct KserveGrpc {
    state: Arc<AppState>,
}

impl KserveGrpc {
    pub fn new(state: Arc<AppState>) -> Self {
        KserveGrpc { state }
    }

    /// Refuses callers without a valid API key or registry token when keys are set:
    /// `authorization: Bearer KEY`, `api-key` or `x-api-key` metadata.
    async fn authorize(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let token = crate::auth::credential(&metadata.clone().into_headers());
        crate::auth::identify(&self.state, token)
            .await
            .map(|_| ())
            .map_err(|_| {
                Status::unauthenticated(
                    "missing or invalid API key: send `authorization: Bearer <key>` (or `x-api-key: <key>`) metadata",
                )
            })
    }

    /// The inference service, if `name` is the model it serves.
    fn model(&self, name: &str) -> Result<InferenceState, Status> {
        let service = self.state.inference.clone().ok_or_else(|| {
            Status::not_found(format!(
                "the model `{name}` does not exist: this server runs without a model (--no-model); start `hangar serve --model ...` to serve one"
            ))
        })?;
        // The model of this request: a reload switches later requests only.
        let inf = InferenceState {
            app: self.state.clone(),
            service: service.current(),
        };
        crate::kserve::check_model(&inf, name).map_err(|e| status(e.0))?;
        Ok(inf)
    }
}

/// A request's prompts and options, decoded (tensor errors name the input).
fn text_infer(req: &ModelInferRequest) -> Result<TextInfer, ApiError> {
    let mut text = TextInfer::new(&tensors::params_to_json(&req.parameters))?;
    let inputs = tensors::decode_inputs(req).map_err(|e| {
        let name = match &e {
            crate::kserve::codec::CodecError::Datatype { name, .. }
            | crate::kserve::codec::CodecError::Element { name, .. }
            | crate::kserve::codec::CodecError::Shape { name, .. }
            | crate::kserve::codec::CodecError::Binary { name, .. }
            | crate::kserve::codec::CodecError::Data { name, .. } => name.clone(),
        };
        ApiError::param(&name, e.to_string())
    })?;
    for (t, datatype) in inputs {
        text.input(t, datatype)?;
    }
    Ok(text)
}

/// A response holding `texts` as `text_output`.
fn text_response(
    inf: &InferenceState,
    req: &ModelInferRequest,
    texts: &[String],
    shape: Vec<i64>,
    params: Map<String, Value>,
) -> ModelInferResponse {
    let (output, raw) = tensors::text_output(texts, shape);
    ModelInferResponse {
        model_name: req.model_name.clone(),
        model_version: model_version(inf),
        id: req.id.clone(),
        parameters: tensors::json_to_params(params),
        outputs: vec![output],
        raw_output_contents: vec![raw],
    }
}

type ResponseTx = mpsc::Sender<Result<ModelStreamInferResponse, Status>>;

/// Answers one request of a stream: one response per piece of generated text (the
/// last with finish reason and token counts), and with [`EMPTY_FINAL`] an empty last
/// response. Returns `Err` for a request that could not start; `Ok(false)` once the
/// client has gone.
async fn stream_one(
    inf: &InferenceState,
    req: &ModelInferRequest,
    tx: &ResponseTx,
) -> Result<bool, ApiError> {
    let empty_final = tensors::flag(&req.parameters, EMPTY_FINAL);
    let (choices, _) = text_infer(req)?.submit(inf)?;
    let mut left = choices.len();
    let multi = left > 1;
    let mut merged = merge(choices);
    while let Some((index, ev)) = merged.next().await {
        let (text, mut params) = match ev {
            TokenEvent::PromptLogprobs(_) => continue,
            TokenEvent::Token(t) if t.text.is_empty() => continue,
            TokenEvent::Token(t) => (t.text, Map::new()),
            TokenEvent::Done {
                text,
                finish,
                usage,
            } => {
                left -= 1;
                let p = usage_parameters(
                    gen::finish_reason(finish),
                    usage.prompt_tokens,
                    usage.completion_tokens,
                );
                (text, p)
            }
            TokenEvent::Error(e) => return Err(ApiError::internal(e)),
        };
        if multi {
            params.insert("index".into(), Value::from(index));
        }
        params.insert(FINAL.into(), Value::Bool(left == 0 && !empty_final));
        let resp = text_response(inf, req, &[text], vec![1], params);
        if !send(tx, resp).await {
            return Ok(false);
        }
    }
    if empty_final {
        let mut params = Map::new();
        params.insert(FINAL.into(), Value::Bool(true));
        let resp = ModelInferResponse {
            model_name: req.model_name.clone(),
            model_version: model_version(inf),
            id: req.id.clone(),
            parameters: tensors::json_to_params(params),
            ..Default::default()
        };
        return Ok(send(tx, resp).await);
    }
    Ok(true)
}

async fn send(tx: &ResponseTx, resp: ModelInferResponse) -> bool {
    tx.send(Ok(ModelStreamInferResponse {
        error_message: String::new(),
        infer_response: Some(resp),
    }))
    .await
    .is_ok()
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for KserveGrpc {
    // Probes answer without a credential, as /v2/health/* do.
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.state.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        req: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        self.authorize(req.metadata()).await?;
        self.model(&req.get_ref().name)?;
        Ok(Response::new(ModelReadyResponse {
            ready: self.state.is_ready(),
        }))
    }

    async fn server_metadata(
        &self,
        req: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        self.authorize(req.metadata()).await?;
        let m = text_infer::server_metadata();
        Ok(Response::new(ServerMetadataResponse {
            name: m.name.into(),
            version: m.version.into(),
            extensions: m.extensions.into_iter().map(String::from).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        self.authorize(req.metadata()).await?;
        let name = req.into_inner().name;
        let inf = self.model(&name)?;
        let (inputs, outputs) = text_infer::signature();
        let meta = |v: Vec<crate::kserve::types::TensorMetadata>| {
            v.into_iter()
                .map(|t| TensorMetadata {
                    name: t.name.into(),
                    datatype: t.datatype.into(),
                    shape: t.shape,
                })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name,
            versions: vec![model_version(&inf)],
            platform: "hangar".into(),
            inputs: meta(inputs),
            outputs: meta(outputs),
        }))
    }

    async fn model_infer(
        &self,
        req: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        self.authorize(req.metadata()).await?;
        let req = req.into_inner();
        let inf = self.model(&req.model_name)?;
        let done = text_infer(&req)
            .map_err(status)?
            .run(&inf)
            .await
            .map_err(status)?;
        let params = done.parameters();
        Ok(Response::new(text_response(
            &inf,
            &req,
            &done.texts,
            done.shape,
            params,
        )))
    }

    type ModelStreamInferStream = ResponseStream;

    /// Requests on one stream are answered in order, each to its end, like a
    /// decoupled Triton model; a request that fails gets an `error_message` response
    /// and the stream goes on.
    async fn model_stream_infer(
        &self,
        req: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        self.authorize(req.metadata()).await?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                let outcome = match this.model(&req.model_name) {
                    Ok(inf) => stream_one(&inf, &req, &tx).await.map_err(|e| e.message),
                    Err(s) => Err(s.message().to_string()),
                };
                let gone = match outcome {
                    Ok(alive) => !alive,
                    Err(message) => tx
                        .send(Ok(ModelStreamInferResponse {
                            error_message: message,
                            infer_response: Some(ModelInferResponse {
                                model_name: req.model_name.clone(),
                                model_version: MODEL_VERSION.into(),
                                id: req.id.clone(),
                                parameters: HashMap::new(),
                                ..Default::default()
                            }),
                        }))
                        .await
                        .is_err(),
                };
                if gone {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Serves the gRPC API on `listener` until `shutdown` resolves, then lets in-flight
/// calls finish (the caller bounds how long).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let limit = state.cfg.max_body_bytes;
    let svc =
        GrpcInferenceServiceServer::new(KserveGrpc::new(state)).max_decoding_message_size(limit);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
