//! Locks for kernel data shared with interrupt handlers and preempting threads.
//!
//! [`IrqMutex`] is a spin lock (correct across CPUs) that also disables interrupts on the
//! holding CPU while held, so that neither an interrupt handler nor a preempting thread on the
//! same CPU can spin forever on a lock its own CPU holds. This is what every lock in the kernel
//! that may be taken with preemption enabled must be.

use core::ops::{Deref, DerefMut};
use x86_64::instructions::interrupts;

/// A spin lock that keeps interrupts off on the holding CPU.
pub struct IrqMutex<T> {
    inner: spin::Mutex<T>,
}

/// Proof that an [`IrqMutex`] is held; interrupts come back as they were when it drops.
pub struct IrqMutexGuard<'a, T> {
    guard: Option<spin::MutexGuard<'a, T>>,
    interrupts_were_enabled: bool,
}

impl<T> IrqMutex<T> {
    pub const fn new(value: T) -> Self {
        Self {
            inner: spin::Mutex::new(value),
        }
    }

    pub fn lock(&self) -> IrqMutexGuard<'_, T> {
        let interrupts_were_enabled = interrupts::are_enabled();
        interrupts::disable();
        IrqMutexGuard {
            guard: Some(self.inner.lock()),
            interrupts_were_enabled,
        }
    }

    pub fn try_lock(&self) -> Option<IrqMutexGuard<'_, T>> {
        let interrupts_were_enabled = interrupts::are_enabled();
        interrupts::disable();
        match self.inner.try_lock() {
            Some(guard) => Some(IrqMutexGuard {
                guard: Some(guard),
                interrupts_were_enabled,
            }),
            None => {
                if interrupts_were_enabled {
                    interrupts::enable();
                }
                None
            }
        }
    }

    /// Releases the lock whoever holds it: only for the panic path, which must print even if
    /// it interrupted a holder that will never run again.
    ///
    /// # Safety
    /// The previous holder must never touch the protected data again.
    pub unsafe fn force_unlock(&self) {
        // SAFETY: forwarded to the caller.
        unsafe { self.inner.force_unlock() }
    }
}

impl<T> Deref for IrqMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_ref().expect("guard is present until drop")
    }
}

impl<T> DerefMut for IrqMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_mut().expect("guard is present until drop")
    }
}

impl<T> Drop for IrqMutexGuard<'_, T> {
    fn drop(&mut self) {
        // Release the lock before interrupts come back on.
        drop(self.guard.take());
        if self.interrupts_were_enabled {
            interrupts::enable();
        }
    }
}
