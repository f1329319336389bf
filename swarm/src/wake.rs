//! Waking a model that is scaled to zero: one request and one answer on a swarm stream.
//!
//! An operator advertises the models it can start ([`ColdModel`]s in its heartbeats). A node
//! that gets a request for one of them opens a [`WAKE_PROTOCOL`] stream to that operator's
//! peer id and sends a [`WakeRequest`]; the operator answers with a [`WakeAnswer`] and, if it
//! owns that InferenceNode and advertises it as cold, scales it up.
//!
//! Who may ask is proven by the stream itself: it rides a Noise connection bound to both
//! peer ids (inside the private swarm's key), so the operator knows which peer asked and the
//! node knows that the operator it chose answered. Neither trusts what the other says
//! beyond that: messages are one line of JSON of at most [`MAX_MESSAGE`] bytes, read within
//! [`IO_TIMEOUT`]; an operator acts only on a resource it advertises itself, so a wake for
//! anything else is refused and changes nothing.

use std::future::Future;
use std::time::Duration;

use futures::AsyncWriteExt;
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use super::heartbeat::{ColdModel, InferenceNodeRef, valid_model_id};
use super::streams::{LineError, read_json_line, write_json_line};
use super::{PeerStream, SwarmError, SwarmHandle};

/// Wake requests: one [`WakeRequest`] line, one [`WakeAnswer`] line.
pub const WAKE_PROTOCOL: StreamProtocol = StreamProtocol::new("/llamanet/wake/1");

/// Longest message either way, newline included.
pub const MAX_MESSAGE: usize = 1024;

/// Upper bound of reading or writing one message.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Wake streams an operator serves at once; more wait for a turn.
const CONCURRENT: usize = 16;

/// "Start `model` of `inference_node`", as the advertisement named them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeRequest {
    pub model: String,
    pub inference_node: InferenceNodeRef,
}

impl From<&ColdModel> for WakeRequest {
    fn from(cold: &ColdModel) -> Self {
        WakeRequest {
            model: cold.id.clone(),
            inference_node: cold.inference_node.clone(),
        }
    }
}

/// What the operator did about a wake request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WakeOutcome {
    /// Replicas are on their way (or were already: waking twice is waking once).
    Waking,
    /// This operator does not advertise that model of that resource as cold.
    NotCold,
    /// The request was not one line of valid JSON naming a valid model.
    Malformed,
    /// The operator could not scale the resource (the API server refused, say).
    Failed,
}

impl WakeOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            WakeOutcome::Waking => "waking",
            WakeOutcome::NotCold => "not_cold",
            WakeOutcome::Malformed => "malformed",
            WakeOutcome::Failed => "failed",
        }
    }
}

/// The operator's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeAnswer {
    pub outcome: WakeOutcome,
    /// In words, for logs and error messages.
    #[serde(default)]
    pub message: String,
}

impl WakeAnswer {
    pub fn new(outcome: WakeOutcome, message: impl Into<String>) -> Self {
        // Room for the JSON around it within one message.
        let message = super::streams::truncate_message(message.into(), MAX_MESSAGE / 2);
        WakeAnswer { outcome, message }
    }
}

/// Asks `operator` to wake what `request` names. Bounded by `timeout` in all (opening the
/// stream included).
pub async fn ask(
    swarm: &SwarmHandle,
    operator: PeerId,
    request: &WakeRequest,
    timeout: Duration,
) -> Result<WakeAnswer, SwarmError> {
    let exchange = async {
        let mut stream = swarm.open_stream(operator, WAKE_PROTOCOL, timeout).await?;
        write_line(&mut stream, request).await?;
        let answer: WakeAnswer = read_json_line(&mut stream, MAX_MESSAGE, IO_TIMEOUT)
            .await
            .map_err(|err| swarm_error(err, "the operator's answer"))?;
        let _ = stream.close().await;
        Ok(answer)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| SwarmError::Timeout(timeout))?
}

/// Serves wake requests until the swarm stops: each one is read, checked, handed to
/// `decide` with the peer that asked (a request that is not valid JSON, or names an
/// invalid model id, is answered [`WakeOutcome::Malformed`] without calling it), and
/// `decide`'s answer is sent back.
pub async fn serve<F, Fut>(swarm: &SwarmHandle, decide: F) -> Result<(), SwarmError>
where
    F: Fn(PeerId, WakeRequest) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = WakeAnswer> + Send,
{
    let incoming = swarm.accept_streams(WAKE_PROTOCOL)?;
    super::streams::serve_each(incoming, CONCURRENT, move |stream| {
        let decide = decide.clone();
        async move {
            let _ = answer(stream, decide).await;
        }
    })
    .await;
    Ok(())
}

async fn answer<F, Fut>(mut stream: PeerStream, decide: F) -> Result<(), SwarmError>
where
    F: Fn(PeerId, WakeRequest) -> Fut,
    Fut: Future<Output = WakeAnswer>,
{
    let peer = stream.peer();
    let answer = match read_json_line::<WakeRequest, _>(&mut stream, MAX_MESSAGE, IO_TIMEOUT).await
    {
        Ok(request) if valid_model_id(&request.model) => decide(peer, request).await,
        Ok(_) => WakeAnswer::new(WakeOutcome::Malformed, "not a valid model id"),
        Err(LineError::Malformed(err)) => {
            WakeAnswer::new(WakeOutcome::Malformed, format!("not a wake request: {err}"))
        }
        Err(err) => WakeAnswer::new(WakeOutcome::Malformed, err.to_string()),
    };
    write_line(&mut stream, &answer).await?;
    let _ = stream.close().await;
    Ok(())
}

async fn write_line(stream: &mut PeerStream, message: &impl Serialize) -> Result<(), SwarmError> {
    write_json_line(stream, message, MAX_MESSAGE, IO_TIMEOUT)
        .await
        .map_err(|err| swarm_error(err, "a wake message"))
}

/// A line's failure as the swarm's error; `what` names the line.
fn swarm_error(err: LineError, what: &str) -> SwarmError {
    match err {
        LineError::Io(err) => SwarmError::Io(err),
        LineError::Timeout(after) => SwarmError::Timeout(after),
        other => SwarmError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{what}: {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_stay_within_one_message() {
        let answer = WakeAnswer::new(WakeOutcome::Failed, "é".repeat(2000));
        let mut line = serde_json::to_vec(&answer).unwrap();
        line.push(b'\n');
        assert!(line.len() <= MAX_MESSAGE, "{}", line.len());
        assert_eq!(
            serde_json::to_value(WakeOutcome::NotCold).unwrap(),
            "not_cold"
        );
    }
}
