"""Will parallel evaluation pay for this model? Lyapunov exponents of a recurrence along its
trajectory, and a calibrated prediction of the iterations a parallel solve will need.
Also the normalised SVD entropy of a matrix (:func:`svd_entropy`), which predicts how well
Dale's-law recurrent networks learn (Li et al., NeurIPS 2023).
"""

from ._lyapunov import finite_time_lyapunov_exponents as finite_time_lyapunov_exponents
from ._lyapunov import lyapunov_exponents as lyapunov_exponents
from ._predict import Parallelizability as Parallelizability
from ._predict import parallelizability as parallelizability
from ._spectrum import svd_entropy as svd_entropy
