/**
 * The client's gRPC retries, made safe to close under.
 *
 * @temporalio/client retries a call the server did not answer (UNAVAILABLE while it
 * restarts) from a timer. If the connection is closed before that timer fires, the retry
 * throws 'Channel has been shut down' inside the timer: an uncaught exception, which ends
 * a CLI process that had already printed its result, or a test run that had passed (seen
 * in CI after the Temporal-restart test). Here every attempt first asks whether its
 * connection is closing; if it is, the call ends with CANCELLED, which is not retried, and
 * its caller gets an ordinary rejection. So does a call started after the close (the SDK's
 * interceptor would throw from a timer on it: test/client-close.test.ts).
 */
import { defaultGrpcRetryOptions, makeGrpcRetryInterceptor } from '@temporalio/client';
import { InterceptingCall, Metadata, status, type Interceptor, type NextCall } from '@grpc/grpc-js';

type Call = ReturnType<NextCall>;

/** A call that never reaches the network and ends at once with CANCELLED. */
function closedCall(): Call {
  return {
    start(_metadata, listener) {
      setImmediate(() => listener?.onReceiveStatus?.({ code: status.CANCELLED, details: 'the Temporal connection was closed', metadata: new Metadata() }));
    },
    sendMessage() {},
    sendMessageWithContext() {},
    startRead() {},
    halfClose() {},
    cancelWithStatus() {},
    getPeer: () => '',
    getAuthContext: () => null,
  };
}

export interface ClosableRetries {
  /** For Connection.connect: the SDK's default retries, each attempt checking `closing`. */
  interceptors: Interceptor[];
  /** Call before Connection.close(): attempts from now on end with CANCELLED instead of throwing. */
  close(): void;
}

export function closableRetries(): ClosableRetries {
  const retry = makeGrpcRetryInterceptor(defaultGrpcRetryOptions());
  let closing = false;
  return {
    // A call made after close skips the SDK's retry interceptor altogether: that one forwards
    // its first attempt's message at the end and throws from a timer when there was none.
    interceptors: [(options, nextCall) => (closing ? new InterceptingCall(closedCall()) : retry(options, (opts) => (closing ? closedCall() : nextCall(opts))))],
    close() {
      closing = true;
    },
  };
}
