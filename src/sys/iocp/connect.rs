//! Outgoing connects of the IOCP backend: `ConnectEx` on a socket bound first, with no SYN
//! retransmission to loopback targets (see the module doc of `iocp`).

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::ptr;

use socket2::SockAddr;
use windows_sys::Win32::Networking::WinSock::{
    bind, WSAIoctl, LPFN_CONNECTEX, SIO_GET_EXTENSION_FUNCTION_POINTER, SOCKET, SOCKET_ERROR,
    WSAEINVAL, WSAID_CONNECTEX,
};

use super::op::{no_syn_retransmissions_to_loopback, raw, wsa_error, Op, OpKind};
use super::{IocpBackend, Token};

impl IocpBackend {
    /// `ConnectEx` is an extension function: its address is asked of the provider once.
    fn connect_ex(&mut self, sock: SOCKET) -> io::Result<LPFN_CONNECTEX> {
        if self.connect_ex.is_none() {
            let guid = WSAID_CONNECTEX;
            let mut f: LPFN_CONNECTEX = None;
            let mut bytes = 0u32;
            // SAFETY: the documented way to get ConnectEx: the GUID in, a function pointer out,
            // both buffers valid for their stated sizes; synchronous (no OVERLAPPED).
            let rc = unsafe {
                WSAIoctl(
                    sock,
                    SIO_GET_EXTENSION_FUNCTION_POINTER,
                    (&guid as *const windows_sys::core::GUID).cast(),
                    mem::size_of_val(&guid) as u32,
                    (&mut f as *mut LPFN_CONNECTEX).cast(),
                    mem::size_of::<LPFN_CONNECTEX>() as u32,
                    &mut bytes,
                    ptr::null_mut(),
                    None,
                )
            };
            if rc == SOCKET_ERROR {
                return Err(wsa_error());
            }
            self.connect_ex = f;
        }
        Ok(self.connect_ex)
    }

    pub(super) fn start_connect(&mut self, token: Token, addr: SocketAddr) -> io::Result<()> {
        let sock = raw(&self.conns[token].as_ref().expect("inserted").sock);
        self.associate(self.conns[token].as_ref().expect("inserted").sock_ref())?;
        // ConnectEx needs a bound socket.
        let any: SockAddr = match addr {
            SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)).into(),
            SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)).into(),
        };
        // SAFETY: `any` is a valid sockaddr of `any.len()` bytes.
        if unsafe { bind(sock, any.as_ptr().cast(), any.len()) } == SOCKET_ERROR {
            let e = wsa_error();
            if e.raw_os_error() != Some(WSAEINVAL) {
                return Err(e); // WSAEINVAL: bound already, fine
            }
        }
        let connect_ex = self
            .connect_ex(sock)?
            .ok_or_else(|| io::Error::other("no ConnectEx"))?;
        no_syn_retransmissions_to_loopback(sock, &addr);
        let addr = Box::new(SockAddr::from(addr));
        let (name, len) = (addr.as_ptr(), addr.len());
        let op = Op::new(token, OpKind::Connect { _addr: addr });
        match self.submit(op, |p| {
            // SAFETY: `p` is a live Op that owns the (boxed, unmoved) address until the
            // completion; no data is sent with the connect.
            unsafe {
                connect_ex(
                    sock,
                    name.cast(),
                    len,
                    ptr::null(),
                    0,
                    ptr::null_mut(),
                    &mut (*p).ovl,
                ) != 0
            }
        }) {
            Ok(()) => {
                if let Some(c) = self.conn(token) {
                    c.ops += 1;
                }
                Ok(())
            }
            Err((e, _)) => Err(e),
        }
    }
}
