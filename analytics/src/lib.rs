//! sellable-analytics: an Arrow Flight SQL server over the lake, for analysts' standard clients
//! (ADBC's Flight SQL driver, `pyarrow.flight`). Each query runs in a DataFusion session of its
//! own over the lake's tables ([`sellable_batch::ANALYTICS_TABLES`]), within a memory pool and a
//! wall time, and its answer is streamed batch by batch as DataFusion produces it: a result of
//! millions of rows never sits in memory whole.
//!
//! Every call needs an API key of the REST API's (`sellable keys new`) with the scope `read`:
//! sent as `authorization: Bearer KEY`, or exchanged in the handshake for basic credentials
//! (any user name, the key as the password).

pub mod live;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any, CommandGetCatalogs,
    CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTables, CommandPreparedStatementQuery, CommandStatementQuery, DoPutPreparedStatementResult,
    ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket};
use arrow_schema::{Schema, SchemaRef};
use datafusion::common::ParamValues;
use datafusion::execution::memory_pool::{FairSpillPool, MemoryPool};
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::scalar::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use sellable_batch::Lake;
use sellable_serving::door::{KeyRing, Scope};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

/// The catalog and schema every table is listed under.
pub const CATALOG: &str = "sellable";
pub const SCHEMA: &str = "lake";

/// Batches a query may produce ahead of what its client has taken (a bound on what an answer
/// holds in memory besides the query's own pool): deep enough that the query keeps running while
/// the encoder and HTTP/2 send, instead of the two taking turns.
const AHEAD: usize = 16;

/// The Flight SQL server; `[serve.analytics]` of the configuration file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsConfig {
    /// Where `sellable serve` serves Flight SQL (`--flight`); none: it does not.
    pub listen: Option<std::net::SocketAddr>,
    /// Memory one query's operators may hold, in MB (DataFusion's pool: sorts spill past it, a
    /// query that cannot is cancelled).
    pub memory_mb: usize,
    /// Wall time one query may run, in seconds, from its first batch asked to its last.
    pub query_timeout_s: u64,
}

impl Default for AnalyticsConfig {
    fn default() -> AnalyticsConfig {
        AnalyticsConfig { listen: None, memory_mb: 512, query_timeout_s: 60 }
    }
}

impl AnalyticsConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.memory_mb < 16 {
            problems.push(format!("serve.analytics.memory_mb = {}: at least 16", self.memory_mb));
        }
        if self.query_timeout_s == 0 {
            problems.push("serve.analytics.query_timeout_s = 0: must be more than 0".to_string());
        }
        problems
    }

    fn limits(&self) -> QueryLimits {
        QueryLimits { memory_bytes: self.memory_mb << 20, time: Duration::from_secs(self.query_timeout_s) }
    }
}

/// What one query may take.
#[derive(Debug, Clone)]
struct QueryLimits {
    memory_bytes: usize,
    time: Duration,
}

/// A prepared statement: its SQL (placeholders numbered `$1`, `$2`, …) and the parameters bound
/// last, if any.
struct Prepared {
    sql: String,
    parameters: Option<Vec<ScalarValue>>,
}

/// The Flight SQL service.
pub struct Analytics {
    lake: Arc<Lake>,
    keys: KeyRing,
    limits: QueryLimits,
    prepared: Mutex<HashMap<String, Prepared>>,
    next: AtomicU64,
    info: SqlInfoData,
    /// The store of the `live` table, if served.
    live: Option<live::LiveSource>,
}

type FlightStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static>>;

impl Analytics {
    pub fn new(lake: Arc<Lake>, keys: KeyRing, config: &AnalyticsConfig) -> Analytics {
        let limits = config.limits();
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "sellable");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
        info.append(SqlInfo::FlightSqlServerReadOnly, true);
        let info = info.build().expect("the server's SQL info is well formed");
        Analytics { lake, keys, limits, prepared: Mutex::new(HashMap::new()), next: AtomicU64::new(1), info, live: None }
    }

    /// Serves the table `live`: the merged view of the epoch `source` gives at each query.
    pub fn with_live(mut self, source: live::LiveSource) -> Analytics {
        self.live = Some(source);
        self
    }

    /// The gRPC service, to serve with `tonic::transport::Server`.
    pub fn service(self) -> FlightServiceServer<Analytics> {
        FlightServiceServer::new(self)
    }

    /// The key a call carries (`authorization: Bearer KEY`), which must hold the scope `read`.
    #[allow(clippy::result_large_err)]
    fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let header = request.metadata().get("authorization").ok_or_else(|| Status::unauthenticated("an API key is needed: authorization: Bearer KEY, or a handshake"))?;
        let token = header.to_str().ok().and_then(|value| value.strip_prefix("Bearer ")).ok_or_else(|| Status::unauthenticated("the authorization must be `Bearer KEY`"))?;
        self.admit(token.trim())
    }

    /// Whether `key` is a configured key with the scope `read`.
    #[allow(clippy::result_large_err)]
    fn admit(&self, key: &str) -> Result<(), Status> {
        let found = self.keys.find(key).ok_or_else(|| Status::unauthenticated("the API key is not known"))?;
        if !found.scopes.contains(&Scope::Read) {
            return Err(Status::permission_denied(format!("the key '{}' lacks the scope 'read' that queries need", found.name)));
        }
        Ok(())
    }

    /// A DataFusion context of its own for one query, within the memory limit: the lake's tables, and
    /// `live` when it is served.
    async fn open(&self) -> Result<(SessionContext, Vec<&'static str>), Status> {
        let pool: Arc<dyn MemoryPool> = Arc::new(FairSpillPool::new(self.limits.memory_bytes));
        let (context, mut names) = self.lake.analytics_session(pool).await.map_err(|error| Status::internal(format!("opening the lake: {error}")))?;
        if let Some(source) = &self.live {
            let table = live::LiveTable::new(source.clone(), self.lake.clone());
            context.register_table("live", Arc::new(table)).map_err(|error| Status::internal(error.to_string()))?;
            names.push("live");
        }
        Ok((context, names))
    }

    async fn session(&self) -> Result<SessionContext, Status> {
        Ok(self.open().await?.0)
    }

    /// The tables with their schemas.
    async fn tables(&self) -> Result<Vec<(&'static str, SchemaRef)>, Status> {
        let (context, names) = self.open().await?;
        let mut tables = Vec::new();
        for name in names {
            let table = context.table_provider(name).await.map_err(|error| Status::internal(error.to_string()))?;
            tables.push((name, table.schema()));
        }
        Ok(tables)
    }

    /// Plans `sql` (with `parameters` bound, if any) in a new session.
    async fn plan(&self, sql: &str, parameters: Option<&[ScalarValue]>) -> Result<DataFrame, Status> {
        let context = self.session().await?;
        let frame = context.sql(sql).await.map_err(|error| Status::invalid_argument(format!("the query does not plan: {error}")))?;
        match parameters {
            Some(values) => frame.with_param_values(ParamValues::List(values.iter().cloned().map(Into::into).collect())).map_err(|error| Status::invalid_argument(format!("the parameters do not fit: {error}"))),
            None => Ok(frame),
        }
    }

    /// Runs a planned query in a task of its own and streams its batches as Flight data: past the
    /// wall-time limit the answer ends with an error and the task is aborted (as it is when the
    /// client goes away); past the memory limit DataFusion fails the query.
    async fn stream(&self, frame: DataFrame) -> Result<FlightStream, Status> {
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let mut batches = frame.execute_stream().await.map_err(query_status)?;
        let (sender, receiver) = tokio::sync::mpsc::channel(AHEAD);
        let query = tokio::spawn(async move {
            while let Some(batch) = batches.next().await {
                let failed = batch.is_err();
                if sender.send(batch).await.is_err() || failed {
                    break;
                }
            }
        });
        let running = Running(query.abort_handle());
        let deadline = tokio::time::Instant::now() + self.limits.time;
        let limit = self.limits.time;
        let limited = futures::stream::unfold(Some((receiver, running)), move |state| async move {
            let (mut receiver, running) = state?;
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(Ok(batch))) => Some((Ok(batch), Some((receiver, running)))),
                Ok(Some(Err(error))) => Some((Err(FlightError::Tonic(Box::new(query_status(error)))), None)),
                Ok(None) => None,
                Err(_) => Some((Err(FlightError::Tonic(Box::new(Status::deadline_exceeded(format!("the query ran past its {} s and was cancelled", limit.as_secs()))))), None)),
            }
        });
        let encoded = FlightDataEncoderBuilder::new().with_schema(schema).build(limited).map_err(Status::from);
        Ok(Box::pin(encoded))
    }

    fn info_for(&self, schema: &Schema, ticket: Vec<u8>, descriptor: FlightDescriptor) -> Result<FlightInfo, Status> {
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
        Ok(FlightInfo::new().try_with_schema(schema).map_err(|error| Status::internal(error.to_string()))?.with_endpoint(endpoint).with_descriptor(descriptor))
    }

    fn prepared_sql(&self, handle: &[u8]) -> Result<(String, Option<Vec<ScalarValue>>), Status> {
        let handle = String::from_utf8_lossy(handle).into_owned();
        let prepared = self.prepared.lock().expect("prepared statements lock poisoned; this is a bug");
        let statement = prepared.get(&handle).ok_or_else(|| Status::not_found(format!("no prepared statement '{handle}'")))?;
        Ok((statement.sql.clone(), statement.parameters.clone()))
    }
}

/// A query's task, aborted when its answer is dropped: finished, past its time, or the client
/// gone.
struct Running(tokio::task::AbortHandle);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A query's failure as a Flight status: past its memory, a resource exhausted; else internal.
fn query_status(error: datafusion::error::DataFusionError) -> Status {
    let text = error.to_string();
    if text.contains("Resources exhausted") {
        Status::resource_exhausted(format!("the query needs more memory than it may take: {text}"))
    } else {
        Status::internal(format!("the query failed: {text}"))
    }
}

/// `?` placeholders (ADBC's) as DataFusion's `$1`, `$2`, …, outside quoted text.
pub fn number_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let (mut quote, mut count) = (None, 0);
    for c in sql.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (Some(open), _) if c == open => {
                quote = None;
                out.push(c);
            }
            (None, '?') => {
                count += 1;
                out.push_str(&format!("${count}"));
            }
            _ => out.push(c),
        }
    }
    out
}

/// One batch (a discovery answer) as a Flight stream.
fn one_batch(schema: SchemaRef, batch: Result<RecordBatch, FlightError>) -> FlightStream {
    let stream = FlightDataEncoderBuilder::new().with_schema(schema).build(futures::stream::once(async move { batch })).map_err(Status::from);
    Box::pin(stream)
}

#[tonic::async_trait]
impl FlightSqlService for Analytics {
    type FlightService = Analytics;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>, Status> {
        let header = request.metadata().get("authorization").and_then(|value| value.to_str().ok()).unwrap_or("").to_string();
        let key = if let Some(basic) = header.strip_prefix("Basic ") {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD.decode(basic.trim()).map_err(|_| Status::unauthenticated("the basic credentials are not base64"))?;
            let text = String::from_utf8(decoded).map_err(|_| Status::unauthenticated("the basic credentials are not text"))?;
            text.split_once(':').map(|(_, password)| password.to_string()).ok_or_else(|| Status::unauthenticated("basic credentials are user:password"))?
        } else if let Some(bearer) = header.strip_prefix("Bearer ") {
            bearer.trim().to_string()
        } else {
            return Err(Status::unauthenticated("the handshake needs basic credentials (any user, the API key as the password) or a bearer key"));
        };
        self.admit(&key)?;
        let answer = HandshakeResponse { protocol_version: 0, payload: key.clone().into() };
        let mut response: Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>> = Response::new(Box::pin(futures::stream::iter([Ok(answer)])));
        let bearer = MetadataValue::try_from(format!("Bearer {key}")).map_err(|_| Status::unauthenticated("the key is not ASCII"))?;
        response.metadata_mut().insert("authorization", bearer);
        Ok(response)
    }

    async fn get_flight_info_statement(&self, query: CommandStatementQuery, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        self.check(&request)?;
        let sql = number_placeholders(&query.query);
        let frame = self.plan(&sql, None).await?;
        let ticket = TicketStatementQuery { statement_handle: sql.into_bytes().into() };
        let info = self.info_for(frame.schema().as_arrow(), ticket.as_any().encode_to_vec(), request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(&self, ticket: TicketStatementQuery, request: Request<Ticket>) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.check(&request)?;
        let sql = String::from_utf8(ticket.statement_handle.to_vec()).map_err(|_| Status::invalid_argument("the ticket is not a query"))?;
        let frame = self.plan(&sql, None).await?;
        Ok(Response::new(self.stream(frame).await?))
    }

    async fn do_action_create_prepared_statement(&self, query: ActionCreatePreparedStatementRequest, request: Request<arrow_flight::Action>) -> Result<ActionCreatePreparedStatementResult, Status> {
        self.check(&request)?;
        let sql = number_placeholders(&query.query);
        let frame = self.plan(&sql, None).await?;
        let types = frame.logical_plan().get_parameter_types().map_err(|error| Status::invalid_argument(error.to_string()))?;
        let mut names: Vec<&String> = types.keys().collect();
        names.sort_by_key(|name| name.trim_start_matches('$').parse::<usize>().unwrap_or(usize::MAX));
        let fields: Vec<arrow_schema::Field> = names
            .iter()
            .map(|name| arrow_schema::Field::new(name.as_str(), types[*name].clone().unwrap_or(arrow_schema::DataType::Utf8), true))
            .collect();
        let options = arrow_ipc::writer::IpcWriteOptions::default();
        let IpcMessage(dataset_schema) = SchemaAsIpc::new(frame.schema().as_arrow(), &options).try_into().map_err(|error: arrow_schema::ArrowError| Status::internal(error.to_string()))?;
        let IpcMessage(parameter_schema) = SchemaAsIpc::new(&Schema::new(fields), &options).try_into().map_err(|error: arrow_schema::ArrowError| Status::internal(error.to_string()))?;
        let handle = format!("p{}", self.next.fetch_add(1, Ordering::Relaxed));
        self.prepared.lock().expect("prepared statements lock poisoned; this is a bug").insert(handle.clone(), Prepared { sql, parameters: None });
        Ok(ActionCreatePreparedStatementResult { prepared_statement_handle: handle.into_bytes().into(), dataset_schema, parameter_schema })
    }

    async fn do_put_prepared_statement_query(&self, query: CommandPreparedStatementQuery, request: Request<PeekableFlightDataStream>) -> Result<DoPutPreparedStatementResult, Status> {
        self.check(&request)?;
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).into_owned();
        // peekable: the first message (the parameters' schema), which the dispatcher peeked, stays
        let data = request.into_inner().into_peekable().map_err(FlightError::from);
        let batches: Vec<RecordBatch> = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(data).try_collect().await.map_err(Status::from)?;
        let parameters: Vec<ScalarValue> = match batches.first() {
            Some(batch) if batch.num_rows() > 0 => batch.columns().iter().map(|column: &ArrayRef| ScalarValue::try_from_array(column, 0)).collect::<Result<_, _>>().map_err(|error| Status::invalid_argument(error.to_string()))?,
            _ => Vec::new(),
        };
        let mut prepared = self.prepared.lock().expect("prepared statements lock poisoned; this is a bug");
        let statement = prepared.get_mut(&handle).ok_or_else(|| Status::not_found(format!("no prepared statement '{handle}'")))?;
        statement.parameters = Some(parameters);
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(handle.into_bytes().into()) })
    }

    async fn get_flight_info_prepared_statement(&self, query: CommandPreparedStatementQuery, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        self.check(&request)?;
        let (sql, parameters) = self.prepared_sql(&query.prepared_statement_handle)?;
        let frame = self.plan(&sql, parameters.as_deref()).await?;
        let info = self.info_for(frame.schema().as_arrow(), query.as_any().encode_to_vec(), request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn do_get_prepared_statement(&self, query: CommandPreparedStatementQuery, request: Request<Ticket>) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.check(&request)?;
        let (sql, parameters) = self.prepared_sql(&query.prepared_statement_handle)?;
        let frame = self.plan(&sql, parameters.as_deref()).await?;
        Ok(Response::new(self.stream(frame).await?))
    }

    async fn do_action_close_prepared_statement(&self, query: ActionClosePreparedStatementRequest, request: Request<arrow_flight::Action>) -> Result<(), Status> {
        self.check(&request)?;
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).into_owned();
        self.prepared.lock().expect("prepared statements lock poisoned; this is a bug").remove(&handle);
        Ok(())
    }

    async fn get_flight_info_catalogs(&self, query: CommandGetCatalogs, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        self.check(&request)?;
        let schema = query.into_builder().schema();
        Ok(Response::new(self.info_for(&schema, query.as_any().encode_to_vec(), request.into_inner())?))
    }

    async fn do_get_catalogs(&self, query: CommandGetCatalogs, request: Request<Ticket>) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.check(&request)?;
        let mut builder = query.into_builder();
        builder.append(CATALOG);
        Ok(Response::new(one_batch(builder.schema(), builder.build())))
    }

    async fn get_flight_info_schemas(&self, query: CommandGetDbSchemas, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        self.check(&request)?;
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(self.info_for(&schema, query.as_any().encode_to_vec(), request.into_inner())?))
    }

    async fn do_get_schemas(&self, query: CommandGetDbSchemas, request: Request<Ticket>) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.check(&request)?;
        let mut builder = query.into_builder();
        builder.append(CATALOG, SCHEMA);
        Ok(Response::new(one_batch(builder.schema(), builder.build())))
    }

    async fn get_flight_info_tables(&self, query: CommandGetTables, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        self.check(&request)?;
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(self.info_for(&schema, query.as_any().encode_to_vec(), request.into_inner())?))
    }

    async fn do_get_tables(&self, query: CommandGetTables, request: Request<Ticket>) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.check(&request)?;
        let tables = self.tables().await?;
        let mut builder = query.into_builder();
        for (name, schema) in tables {
            builder.append(CATALOG, SCHEMA, name, "TABLE", &schema).map_err(Status::from)?;
        }
        Ok(Response::new(one_batch(builder.schema(), builder.build())))
    }

    async fn get_flight_info_sql_info(&self, query: CommandGetSqlInfo, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        self.check(&request)?;
        let schema = query.clone().into_builder(&self.info).schema();
        Ok(Response::new(self.info_for(&schema, query.as_any().encode_to_vec(), request.into_inner())?))
    }

    async fn do_get_sql_info(&self, query: CommandGetSqlInfo, request: Request<Ticket>) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.check(&request)?;
        let builder = query.into_builder(&self.info);
        Ok(Response::new(one_batch(builder.schema(), builder.build())))
    }

    async fn do_get_fallback(&self, request: Request<Ticket>, message: Any) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.check(&request)?;
        Err(Status::unimplemented(format!("this server does not answer {}", message.type_url)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// Serves `analytics` on `listener` until `shutdown` resolves.
pub async fn serve(analytics: Analytics, listener: tokio::net::TcpListener, shutdown: impl std::future::Future<Output = ()>) -> Result<(), tonic::transport::Error> {
    // without TCP_NODELAY a small answer waits for the client's delayed acknowledgement (40 ms)
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder().add_service(analytics.service()).serve_with_incoming_shutdown(incoming, shutdown).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_are_numbered_outside_quotes() {
        assert_eq!(super::number_placeholders("SELECT * FROM t WHERE a = ? AND b = '?' AND c = ?"), "SELECT * FROM t WHERE a = $1 AND b = '?' AND c = $2");
    }
}
